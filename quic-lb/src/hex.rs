//! Lower-case hex for keys and server IDs, as the CLI and the draft's test vectors write them.

use thiserror::Error;

/// Why a string is not hex of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HexError {
    #[error("{0:?} has an odd number of hex digits")]
    OddLength(String),
    #[error("{input:?} has a character that is not a hex digit: {bad:?}")]
    NotHex { input: String, bad: char },
}

/// Decodes `input` (upper or lower case, no prefix or separators).
pub(crate) fn decode(input: &str) -> Result<Vec<u8>, HexError> {
    let chars: Vec<char> = input.chars().collect();
    if !chars.len().is_multiple_of(2) {
        return Err(HexError::OddLength(input.to_owned()));
    }
    let digit = |c: char| {
        c.to_digit(16).ok_or_else(|| HexError::NotHex {
            input: input.to_owned(),
            bad: c,
        })
    };
    chars
        .chunks(2)
        .map(|pair| Ok((digit(pair[0])? << 4 | digit(pair[1])?) as u8))
        .collect()
}

/// Encodes `bytes` as lower-case hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_digits() {
        assert_eq!(decode("00aBff"), Ok(vec![0x00, 0xab, 0xff]));
        assert_eq!(encode(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(decode("abc"), Err(HexError::OddLength("abc".into())));
        assert_eq!(
            decode("zz"),
            Err(HexError::NotHex {
                input: "zz".into(),
                bad: 'z'
            })
        );
        // A multi-byte character is one bad digit, not a panic on a char boundary.
        assert!(matches!(
            decode("é0"),
            Err(HexError::NotHex { bad: 'é', .. })
        ));
    }
}
