//! The traffic helper of the system tests and the benchmark, run inside
//! network namespaces; see `weft_tests::netns::traffic` for its commands.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    weft_tests::netns::traffic::main(&args)
}
