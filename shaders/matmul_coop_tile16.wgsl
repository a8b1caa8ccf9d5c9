// matmul_coop_tile16.wgsl: prepended to matmul_coop.wgsl and quant_linear_coop.wgsl
// (src/backend/wgpu/pipelines.rs) for an adapter that lists the f16 16x16x16 -> f32
// cooperative-matrix configuration (NVIDIA's drivers list it for the tensor cores).
// WGSL has no generics over matrix sizes: the tile size T and the three matrix types are all that
// differ. The enables must open the module.
enable f16;
enable wgpu_cooperative_matrix;

const T: u32 = 16u;
alias TileA = coop_mat16x16<f16, A>;
alias TileB = coop_mat16x16<f16, B>;
alias TileC = coop_mat16x16<f32, C>;

