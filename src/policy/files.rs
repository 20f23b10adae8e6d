//! A bundle's files as text, by name: what a policy version stores, what a draft sends, and
//! what `policies/` holds on disk.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::bundle::{PolicySources, ENTITIES_FILE, SCHEMA_FILE, TESTS_DIR};
use super::error::{PolicyError, PolicyErrors, SourceFile};

/// Most files a bundle may have, and most bytes in all (a draft arrives over HTTP).
pub const MAX_FILES: usize = 200;
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// The files of a bundle: `schema.cedarschema`, `entities.json`, `*.cedar` and `tests/*.toml`.
/// Any other name is refused, so a stored version is exactly a policy directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
#[schema(value_type = BTreeMap<String, String>)]
pub struct PolicyFiles(BTreeMap<String, String>);

/// Why a set of files is not a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    #[error("file name {0:?} is not allowed: a bundle holds schema.cedarschema, entities.json, <name>.cedar and tests/<name>.toml (names of letters, digits, '-', '_' and '.')")]
    BadName(String),
    #[error("a bundle holds at most {MAX_FILES} files and {MAX_BYTES} bytes")]
    TooLarge,
    #[error("file {0:?} contains a NUL character")]
    Nul(String),
}

impl TryFrom<BTreeMap<String, String>> for PolicyFiles {
    type Error = FilesError;

    fn try_from(files: BTreeMap<String, String>) -> Result<Self, FilesError> {
        if files.len() > MAX_FILES || files.values().map(String::len).sum::<usize>() > MAX_BYTES {
            return Err(FilesError::TooLarge);
        }
        if let Some(bad) = files.keys().find(|name| !allowed_name(name)) {
            return Err(FilesError::BadName(bad.clone()));
        }
        // Postgres text cannot hold NUL, and no policy file needs one.
        if let Some((name, _)) = files.iter().find(|(_, text)| text.contains('\0')) {
            return Err(FilesError::Nul(name.clone()));
        }
        Ok(Self(files))
    }
}

impl From<PolicyFiles> for BTreeMap<String, String> {
    fn from(files: PolicyFiles) -> Self {
        files.0
    }
}

fn allowed_name(name: &str) -> bool {
    let plain = |stem: &str| {
        !stem.is_empty()
            && !stem.starts_with('.')
            && stem
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    name == SCHEMA_FILE
        || name == ENTITIES_FILE
        || name.strip_suffix(".cedar").is_some_and(plain)
        || name
            .strip_prefix(TESTS_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix(".toml"))
            .is_some_and(plain)
}

impl PolicyFiles {
    /// Reads a policy directory: the schema, the entities, every `*.cedar` file and every
    /// `tests/*.toml` suite.
    pub fn read_dir(dir: &Path) -> Result<Self, PolicyErrors> {
        let sources = PolicySources::read_dir(dir)?;
        let mut files = BTreeMap::new();
        for file in std::iter::once(&sources.schema)
            .chain(&sources.policies)
            .chain(std::iter::once(&sources.entities))
        {
            files.insert(file.name.clone(), file.text.to_string());
        }
        let tests = dir.join(TESTS_DIR);
        if tests.is_dir() {
            let io = |e: std::io::Error| PolicyErrors {
                errors: vec![PolicyError::io("suite::io", &tests, e.to_string())],
            };
            for entry in std::fs::read_dir(&tests).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.extension().is_some_and(|x| x == "toml") {
                    let name = format!(
                        "{TESTS_DIR}/{}",
                        path.file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    );
                    files.insert(name, std::fs::read_to_string(&path).map_err(io)?);
                }
            }
        }
        Self::try_from(files).map_err(|e| PolicyErrors {
            errors: vec![PolicyError::io("policy::files", dir, e.to_string())],
        })
    }

    /// The files that decide (schema, policies, entities); a missing schema or entities file
    /// is an error with the file's name.
    pub fn sources(&self) -> Result<PolicySources, PolicyErrors> {
        #[expect(clippy::result_large_err, reason = "cold path, errors are collected")]
        let get = |name: &str| {
            self.0
                .get(name)
                .map(|text| SourceFile::new(name, text.as_str()))
                .ok_or_else(|| {
                    PolicyError::new(
                        "policy::missing_file",
                        &SourceFile::new(name, ""),
                        format!("the bundle has no {name}"),
                    )
                })
        };
        let schema = get(SCHEMA_FILE);
        let entities = get(ENTITIES_FILE);
        let policies = self
            .0
            .iter()
            .filter(|(name, _)| name.ends_with(".cedar"))
            .map(|(name, text)| SourceFile::new(name.as_str(), text.as_str()))
            .collect();
        match (schema, entities) {
            (Ok(schema), Ok(entities)) => Ok(PolicySources {
                schema,
                policies,
                entities,
            }),
            (schema, entities) => Err(PolicyErrors {
                errors: [schema.err(), entities.err()]
                    .into_iter()
                    .flatten()
                    .collect(),
            }),
        }
    }

    /// The test suites, in name order.
    pub fn tests(&self) -> Vec<SourceFile> {
        self.0
            .iter()
            .filter(|(name, _)| {
                name.strip_prefix(TESTS_DIR)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
            .map(|(name, text)| SourceFile::new(name.as_str(), text.as_str()))
            .collect()
    }

    /// The version hash: SHA-256 over every file's name and text, tests included, so that the
    /// same files are always the same version and any change (a test too) is another. It is
    /// what decisions record as their `policy_version`.
    pub fn content_hash(&self) -> String {
        let mut hasher = Sha256::new();
        for (name, text) in &self.0 {
            for part in [name.as_bytes(), text.as_bytes()] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
        }
        hex::encode(hasher.finalize())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_a_policy_directory_are_refused() {
        for good in [
            "schema.cedarschema",
            "entities.json",
            "us.cedar",
            "us-ofac_2.cedar",
            "tests/us.toml",
        ] {
            assert!(allowed_name(good), "{good}");
        }
        for bad in [
            "../etc/passwd.cedar",
            "a/b.cedar",
            ".cedar",
            ".hidden.cedar",
            "tests/../x.toml",
            "tests/a/b.toml",
            "notes.txt",
            "tests/.toml",
            "schema.json",
        ] {
            assert!(!allowed_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_files_under_tests_are_suites_and_nul_is_refused() {
        let files = PolicyFiles::try_from(BTreeMap::from([
            ("tests-eu.cedar".to_owned(), "// a policy file".to_owned()),
            ("tests/eu.toml".to_owned(), String::new()),
        ]))
        .unwrap();
        let suites: Vec<String> = files.tests().iter().map(|f| f.name.clone()).collect();
        assert_eq!(suites, ["tests/eu.toml"]);
        assert_eq!(
            PolicyFiles::try_from(BTreeMap::from([("us.cedar".to_owned(), "a\0b".to_owned())])),
            Err(FilesError::Nul("us.cedar".into()))
        );
    }

    #[test]
    fn the_policy_directory_reads_whole() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let files = PolicyFiles::read_dir(&dir).unwrap();
        assert!(files.names().any(|n| n == "us.cedar"));
        assert!(files.tests().iter().any(|t| &*t.name == "tests/us.toml"));
        assert_eq!(
            files.sources().unwrap().policies.len(),
            PolicySources::read_dir(&dir).unwrap().policies.len()
        );
        // A test is part of the version.
        let mut edited: BTreeMap<String, String> = files.clone().into();
        edited
            .get_mut("tests/us.toml")
            .unwrap()
            .push_str("\n# reviewed\n");
        let edited = PolicyFiles::try_from(edited).unwrap();
        assert_ne!(edited.content_hash(), files.content_hash());
        assert_eq!(files.content_hash().len(), 64);
    }
}
