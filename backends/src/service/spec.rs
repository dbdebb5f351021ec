//! Pipeline specs: a stage is a backend name and shell-quoted arguments.
//!
//! Quoting follows the POSIX shell, without expansions: whitespace separates words; `'...'`
//! keeps everything literally; `"..."` keeps everything but `\"` and `\\`, which stand for `"`
//! and `\`; outside quotes `\` makes the next character literal. Quoted parts join the word
//! they touch (`a'b c'` is one word). A stage nested in another (the children of `aggregate`)
//! is one quoted word: `aggregate "simulator a" 'exec /bin/sh -c "echo hi"'`.

use std::fmt;
use std::str::FromStr;

use crate::service::StageError;

/// One stage of a pipeline: `BACKEND ARGS...`.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct StageSpec {
    /// The backend's name in the registry.
    pub backend: String,
    /// The words after the name, unquoted.
    pub args: Vec<String>,
    /// The text it was parsed from.
    pub text: String,
}

impl StageSpec {
    /// Parses `BACKEND ARGS...`.
    ///
    /// ```
    /// use backends::service::StageSpec;
    ///
    /// let spec: StageSpec = r#"aggregate "simulator a" 'simulator b'"#.parse().unwrap();
    /// assert_eq!(spec.backend, "aggregate");
    /// assert_eq!(spec.args, ["simulator a", "simulator b"]);
    /// ```
    ///
    /// # Errors
    /// [`SpecError`]: bad quoting (with its column), or no words at all.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        let mut words = split_words(text)?.into_iter();
        let backend = words.next().ok_or(SpecError::Empty)?;
        Ok(Self { backend, args: words.collect(), text: text.to_owned() })
    }
}

impl FromStr for StageSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for StageSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses each stage of a pipeline, in order.
///
/// # Errors
/// [`StageError`] naming the first bad stage (counted from 1) and its text; stage 0 if there
/// are no stages.
pub fn parse_pipeline<S: AsRef<str>>(stages: &[S]) -> Result<Vec<StageSpec>, StageError> {
    if stages.is_empty() {
        return Err(StageError { stage: 0, text: String::new(), reason: SpecError::Empty.into() });
    }
    stages
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let text = text.as_ref();
            StageSpec::parse(text).map_err(|error| StageError {
                stage: index + 1,
                text: text.to_owned(),
                reason: error.into(),
            })
        })
        .collect()
}

/// Splits `text` into words as a POSIX shell would, without expansions (see the module docs).
///
/// ```
/// use backends::service::split_words;
///
/// let words = split_words(r#"exec /bin/sh -c "echo \"hi\"; exit 3""#).unwrap();
/// assert_eq!(words, ["exec", "/bin/sh", "-c", r#"echo "hi"; exit 3"#]);
/// ```
///
/// # Errors
/// [`SpecError::Unterminated`] for a quote that is never closed, with the column (counted in
/// characters from 1) where it opened; [`SpecError::TrailingBackslash`] for a `\` at the end.
pub fn split_words(text: &str) -> Result<Vec<String>, SpecError> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars().enumerate().map(|(index, c)| (index + 1, c));
    while let Some((column, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, c)) => word.push(c),
                        None => return Err(SpecError::Unterminated { quote: '\'', column }),
                    }
                }
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c @ ('"' | '\\'))) => word.push(c),
                            Some((_, c)) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(SpecError::Unterminated { quote: '"', column }),
                        },
                        Some((_, c)) => word.push(c),
                        None => return Err(SpecError::Unterminated { quote: '"', column }),
                    }
                }
            }
            '\\' => match chars.next() {
                Some((_, c)) => word.get_or_insert_with(String::new).push(c),
                None => return Err(SpecError::TrailingBackslash { column }),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// A stage spec that does not parse.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A quote opened and never closed.
    #[error("unterminated {} quote opened at column {column}", quote_name(*.quote))]
    Unterminated {
        /// `'` or `"`.
        quote: char,
        /// Where it opened, in characters from 1.
        column: usize,
    },
    /// A backslash with nothing after it.
    #[error("backslash at column {column} escapes nothing")]
    TrailingBackslash {
        /// Where it is, in characters from 1.
        column: usize,
    },
    /// No words: no backend named.
    #[error("empty stage: expected a backend name")]
    Empty,
}

fn quote_name(quote: char) -> &'static str {
    if quote == '\'' {
        "single"
    } else {
        "double"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::StageFailure;

    #[test]
    fn words_split_on_whitespace() {
        assert_eq!(split_words("  simulator   a\tb \n").unwrap(), ["simulator", "a", "b"]);
        assert!(split_words("   ").unwrap().is_empty());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(split_words(r"'a b' 'it''s' ''").unwrap(), ["a b", "its", ""]);
        assert_eq!(split_words(r#""a \"b\" \\ \n""#).unwrap(), [r#"a "b" \ \n"#]);
        assert_eq!(split_words(r"a\ b \'c").unwrap(), ["a b", "'c"]);
        assert_eq!(split_words(r#"x"y z"'w'"#).unwrap(), ["xy zw"]);
        assert_eq!(split_words(r#"'"' "'""#).unwrap(), ["\"", "'"]);
    }

    #[test]
    fn nested_specs_survive_one_level_of_quoting() {
        let outer =
            StageSpec::parse(r#"aggregate "exec /bin/sh -c 'echo \"a b\"'" 'debug'"#).unwrap();
        assert_eq!(outer.args.len(), 2);
        let inner = StageSpec::parse(&outer.args[0]).unwrap();
        assert_eq!(inner.backend, "exec");
        assert_eq!(inner.args, ["/bin/sh", "-c", r#"echo "a b""#]);
    }

    #[test]
    fn errors_carry_the_column() {
        assert_eq!(
            split_words("exec 'abc").unwrap_err(),
            SpecError::Unterminated { quote: '\'', column: 6 }
        );
        assert_eq!(
            split_words(r#"a "b\""#).unwrap_err(),
            SpecError::Unterminated { quote: '"', column: 3 }
        );
        assert_eq!(split_words(r"ab\").unwrap_err(), SpecError::TrailingBackslash { column: 3 });
        assert_eq!(
            SpecError::Unterminated { quote: '"', column: 3 }.to_string(),
            "unterminated double quote opened at column 3"
        );
        // Columns count characters, not bytes.
        assert_eq!(
            split_words("é 'x").unwrap_err(),
            SpecError::Unterminated { quote: '\'', column: 3 }
        );
    }

    #[test]
    fn pipelines_name_the_bad_stage() {
        let error = parse_pipeline(&["debug", "simulator 'a", "debug"]).unwrap_err();
        assert_eq!(error.stage, 2);
        assert_eq!(
            error.to_string(),
            "stage 2 (\"simulator 'a\"): unterminated single quote opened at column 11"
        );
        let error = parse_pipeline(&["debug", "  "]).unwrap_err();
        assert!(matches!(error.reason, StageFailure::Parse(SpecError::Empty)), "{error}");
        let empty: [&str; 0] = [];
        assert_eq!(parse_pipeline(&empty).unwrap_err().stage, 0);
        let stages = parse_pipeline(&["simulator a b", "debug"]).unwrap();
        assert_eq!(stages[0].args, ["a", "b"]);
        assert_eq!(stages[1].backend, "debug");
    }
}
