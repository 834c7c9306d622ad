//! The `zhijian` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    zhijian::cli::main()
}
