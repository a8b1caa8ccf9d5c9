fn main() -> std::process::ExitCode {
    loraforge::cli::main()
}
