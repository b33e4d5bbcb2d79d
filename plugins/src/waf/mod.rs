//! The web application firewall: request decoding and parsing shared by all rules,
//! signature rules compiled for one pass per field, and anomaly scoring.

pub mod decode;
pub mod inspect;
pub mod memo;
pub mod parse;
pub mod rules;

pub use inspect::{Inspection, Inspections, Profile, Source, Target, Transform};
pub use memo::FieldMemo;
pub use rules::{RuleError, RuleMatch, RuleSet, Severity};
