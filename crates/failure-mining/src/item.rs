//! An item before the builder gives it an id and a split.

use records::mining::{Grader, Split, TestItem};
use sha2::{Digest, Sha256};

/// A task as a pool loader or a generator produces it.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemDraft {
    pub family: String,
    pub source: String,
    pub prompt: String,
    pub question: String,
    pub gold: String,
    pub grader: Grader,
}

impl ItemDraft {
    /// `tl-` + the first 16 hex digits of sha256 over family, prompt and grader: the same task
    /// gets the same id in every build, and any change to what is asked or graded changes it.
    pub fn id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.family.as_bytes());
        hasher.update([0]);
        hasher.update(self.prompt.as_bytes());
        hasher.update([0]);
        hasher.update(serde_json::to_vec(&self.grader).expect("graders serialise"));
        format!("tl-{}", &hex::encode(hasher.finalize())[..16])
    }

    pub fn into_item(self, id: String, split: Split) -> TestItem {
        TestItem {
            id,
            family: self.family,
            source: self.source,
            split,
            prompt: self.prompt,
            question: self.question,
            gold: self.gold,
            grader: self.grader,
        }
    }
}
