//! `regulator policy …`: offline checks of a policy directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use regulator::policy::{bundle::TESTS_DIR, suite, PolicyBundle, PolicyEngine, PolicyErrors};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check the schema, every policy (strictly, against the schema) and the entities; print each
    /// error with its place in the source.
    Validate(PolicyDir),
    /// Run the test suites in `<policies>/tests/*.toml` against the policies.
    Test(PolicyDir),
}

#[derive(Debug, Args)]
pub struct PolicyDir {
    /// The policy directory.
    #[arg(long, env = "REGULATOR_POLICIES", default_value = "policies")]
    policies: PathBuf,
}

impl PolicyCommand {
    pub fn run(self) -> ExitCode {
        match self {
            PolicyCommand::Validate(dir) => validate(&dir.policies),
            PolicyCommand::Test(dir) => test(&dir.policies),
        }
    }
}

fn load(dir: &Path) -> Result<PolicyBundle, ExitCode> {
    PolicyBundle::load_dir(dir).map_err(|errors| {
        report(errors);
        ExitCode::from(1)
    })
}

fn report(errors: PolicyErrors) {
    for error in errors.errors {
        eprintln!("{:?}", miette::Report::new(error));
    }
}

fn validate(dir: &Path) -> ExitCode {
    match load(dir) {
        Ok(bundle) => {
            println!(
                "ok: {} policies in {}, version {}",
                bundle.policy_count(),
                dir.display(),
                bundle.hash()
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn test(dir: &Path) -> ExitCode {
    let engine = match load(dir) {
        Ok(bundle) => PolicyEngine::new(bundle),
        Err(code) => return code,
    };
    let results = match suite::run_dir(&engine, &dir.join(TESTS_DIR)) {
        Ok(results) => results,
        Err(errors) => {
            report(errors);
            return ExitCode::from(2);
        }
    };
    let failed = results.iter().filter(|r| !r.passed).count();
    for r in &results {
        let mark = if r.passed { "pass" } else { "FAIL" };
        println!("{mark}  {} › {}", r.file, r.name);
        for why in &r.failures {
            println!("        {why}");
        }
    }
    println!(
        "\n{} cases: {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    if failed == 0 && !results.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
