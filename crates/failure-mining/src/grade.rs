//! Graders: read a model's reply and decide whether it is right, saying why when it is not.
//! (Interface only in this commit; the implementation lands with its tests.)

use records::mining::Grader;

/// The verdict on one reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Grade {
    pub correct: bool,
    /// What the grader read from the reply (a letter, a number, a normalised answer);
    /// `None` when nothing matched.
    pub extracted: Option<String>,
    /// Why it is wrong (`None` when correct), e.g. "expected 1000, read 100".
    pub reason: Option<String>,
}

/// Grades a generated reply with any exact grader. [`Grader::Judge`] needs an LLM and is graded
/// elsewhere; here it is reported as not gradable.
pub fn grade_reply(grader: &Grader, reply: &str) -> Grade {
    let _ = (grader, reply);
    unimplemented!("lands with the graders")
}
