//! The values a bundle's policies can match: the jurisdictions and asset classes its
//! `entities.json` declares. Asset registration checks against the active version's, so an
//! asset that no policy could ever match (`UK` where the entities say `GB`) is refused up front
//! instead of being denied order after order.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::bundle::ENTITIES_FILE;
use super::files::PolicyFiles;

/// The entity types whose ids are registration values.
pub const JURISDICTION_TYPE: &str = "Jurisdiction";
pub const ASSET_CLASS_TYPE: &str = "AssetClass";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    pub jurisdictions: BTreeSet<String>,
    /// Empty when the bundle declares no `AssetClass` entities: then any class is accepted,
    /// as before asset classes were declared.
    pub asset_classes: BTreeSet<String>,
}

#[derive(Deserialize)]
struct EntityJson {
    uid: UidJson,
}

#[derive(Deserialize)]
struct UidJson {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

impl Vocabulary {
    /// Reads the ids from `entities.json`; a bundle that stored is one that compiled, so a file
    /// that does not read gives an empty vocabulary (nothing is refused on its account).
    pub fn of(files: &PolicyFiles) -> Self {
        let entities: Vec<EntityJson> = files
            .get(ENTITIES_FILE)
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let ids = |kind: &str| -> BTreeSet<String> {
            entities
                .iter()
                .filter(|e| e.uid.kind == kind)
                .map(|e| e.uid.id.clone())
                .collect()
        };
        Self {
            jurisdictions: ids(JURISDICTION_TYPE),
            asset_classes: ids(ASSET_CLASS_TYPE),
        }
    }

    /// Why an asset with these attributes would never be matched, or `None`.
    pub fn refuse(&self, jurisdiction: &str, asset_class: &str) -> Option<String> {
        let list = |values: &BTreeSet<String>| {
            values
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut why = Vec::new();
        if !self.jurisdictions.is_empty() && !self.jurisdictions.contains(jurisdiction) {
            why.push(format!(
                "issuer_jurisdiction {jurisdiction:?} is not a jurisdiction of the active policies (known: {})",
                list(&self.jurisdictions)
            ));
        }
        if !self.asset_classes.is_empty() && !self.asset_classes.contains(asset_class) {
            why.push(format!(
                "asset_class {asset_class:?} is not an asset class of the active policies (known: {})",
                list(&self.asset_classes)
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_entities_name_their_jurisdictions_and_classes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let vocabulary = Vocabulary::of(&PolicyFiles::read_dir(&dir).unwrap());
        assert!(vocabulary.jurisdictions.contains("GB"));
        assert!(vocabulary.asset_classes.contains("security"));
        assert_eq!(vocabulary.refuse("US", "security"), None);
        let why = vocabulary.refuse("UK", "bond").unwrap();
        assert!(why.contains("\"UK\"") && why.contains("GB"), "{why}");
        assert!(
            why.contains("\"bond\"") && why.contains("stablecoin"),
            "{why}"
        );
        // A bundle that declares no classes accepts any.
        let open = Vocabulary {
            asset_classes: BTreeSet::new(),
            ..vocabulary
        };
        assert_eq!(open.refuse("US", "bond"), None);
    }
}
