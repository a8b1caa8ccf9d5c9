// matmul_coop_tile8.wgsl: prepended to matmul_coop.wgsl and quant_linear_coop.wgsl
// (src/backend/wgpu/pipelines.rs) for an adapter that lists the f16 8x8x8 -> f32
// cooperative-matrix configuration (lavapipe from Mesa 26, which lists only 8x8x8).
// WGSL has no generics over matrix sizes: the tile size T and the three matrix types are all that
// differ. The enables must open the module.
enable f16;
enable wgpu_cooperative_matrix;

const T: u32 = 8u;
alias TileA = coop_mat8x8<f16, A>;
alias TileB = coop_mat8x8<f16, B>;
alias TileC = coop_mat8x8<f32, C>;

