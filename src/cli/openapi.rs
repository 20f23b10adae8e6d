//! `regulator openapi`: print the OpenAPI document generated from the code.

use std::process::ExitCode;

pub fn run() -> ExitCode {
    print!("{}", regulator::api::openapi_json());
    ExitCode::SUCCESS
}
