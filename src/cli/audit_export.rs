//! `regulator audit export`: stream `GET /v1/audit/export` from a server into a file, with a
//! progress bar on a terminal.
//!
//! The file appears only when the export is complete: it is written beside its final name and
//! renamed at the end, so a cut connection never leaves a short file that looks like a whole
//! export.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use futures::StreamExt;

use regulator::api::problem::Problem;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The server (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "REGULATOR_SERVER")]
    server: String,
    /// A token with the auditor (or admin) role.
    #[arg(long, env = "REGULATOR_TOKEN", hide_env_values = true)]
    token: String,
    /// `ndjson` (one item per line) or `csv`.
    #[arg(long, default_value = "ndjson")]
    format: String,
    /// A filter of `GET /v1/audit/export`, `NAME=VALUE` (repeatable): chain, asset, holder,
    /// issuer, kind, outcome, policy, subject, from_time, to_time, from_seq, to_seq, after.
    #[arg(long = "filter", value_name = "NAME=VALUE")]
    filters: Vec<String>,
    /// The file to write (replaced only once the export is complete).
    #[arg(long, short)]
    output: PathBuf,
}

impl ExportArgs {
    pub fn run(self) -> ExitCode {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
        match runtime.block_on(self.export()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("error: {why}");
                ExitCode::from(2)
            }
        }
    }

    async fn export(self) -> Result<(), String> {
        let base = self.server.trim_end_matches('/');
        let mut url = url::Url::parse(&format!("{base}/v1/audit/export"))
            .map_err(|e| format!("--server {:?}: {e}", self.server))?;
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("format", &self.format);
            for filter in &self.filters {
                let (name, value) = filter
                    .split_once('=')
                    .ok_or_else(|| format!("--filter {filter:?} is not NAME=VALUE"))?;
                query.append_pair(name.trim(), value);
            }
        }
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("{base}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(match serde_json::from_str::<Problem>(&text) {
                Ok(problem) => format!("{} ({}): {}", problem.status, problem.kind, problem.detail),
                Err(_) => format!("{status}: {text}"),
            });
        }
        let partial = partial_path(&self.output);
        let file = std::fs::File::create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        let written = copy(response, file).await;
        let (lines, bytes) = match written {
            Ok(counts) => counts,
            Err(why) => {
                let _ = std::fs::remove_file(&partial);
                return Err(why);
            }
        };
        std::fs::rename(&partial, &self.output)
            .map_err(|e| format!("cannot move the export to {}: {e}", self.output.display()))?;
        println!(
            "exported {lines} lines ({bytes} bytes) to {}",
            self.output.display()
        );
        Ok(())
    }
}

/// `export.csv` is written as `.export.csv.partial` beside it.
fn partial_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    output.with_file_name(format!(".{name}.partial"))
}

/// Streams the body into `file`, drawing the bytes and lines so far; returns both.
async fn copy(response: reqwest::Response, file: std::fs::File) -> Result<(u64, u64), String> {
    let bar = super::progress::bytes();
    let mut out = std::io::BufWriter::new(file);
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("the export was cut off: {e}"))?;
        out.write_all(&chunk)
            .map_err(|e| format!("cannot write the export: {e}"))?;
        lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        bytes += chunk.len() as u64;
        bar.set_message(format!("exporting: {lines} lines,"));
        bar.set_position(bytes);
    }
    bar.finish_and_clear();
    let file = out
        .into_inner()
        .map_err(|e| format!("cannot write the export: {e}"))?;
    file.sync_all()
        .map_err(|e| format!("cannot write the export: {e}"))?;
    Ok((lines, bytes))
}
