//! A QUIC-LB configuration: the config ID that the first octet carries (draft-ietf-quic-
//! load-balancers-21 §3.1), the lengths of the server ID and nonce, and the key that
//! encrypts them if any (§5.3, "Configuration Agent Actions"), in the form the lb CLI takes.

use std::{fmt, str::FromStr};

use thiserror::Error;

/// The config rotation codepoint of unroutable CIDs (§3.2): no configuration may use it.
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// The largest config ID a configuration may have.
pub const MAX_CONFIG_ID: u8 = UNROUTABLE_CONFIG_ID - 1;

/// Server ID and nonce together: a QUIC v1 CID is at most 20 octets, one of them the first.
pub const MAX_PLAINTEXT_LEN: usize = 19;

/// Octets of the AES-128 key.
pub const KEY_LEN: usize = 16;

/// How the server ID and nonce are written after the first octet (§5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No key: server ID then nonce, as they are. Anyone can read the server ID.
    Plaintext,
    /// Server ID and nonce are exactly 16 octets: one AES-128-ECB block (§5.4.1).
    SinglePass,
    /// Any other length: the four-round Feistel network of §5.4.2.
    FourPass,
}

/// A valid QUIC-LB configuration: built by [`Config::new`] or parsed from
/// `config=0,server-id-len=2,nonce-len=6[,key=<32 hex digits>]`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Config {
    id: u8,
    server_id_len: u8,
    nonce_len: u8,
    key: Option<[u8; KEY_LEN]>,
}

/// Why a configuration, or its text, is not valid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("config id {0} is out of range 0 to 6 (7, 0b111, marks unroutable CIDs)")]
    ConfigId(u8),
    #[error("server id length {0} is out of range 1 to 15 octets")]
    ServerIdLen(u8),
    #[error("nonce length {0} is out of range 4 to 18 octets")]
    NonceLen(u8),
    #[error(
        "server id length {server_id_len} + nonce length {nonce_len} is over 19 octets \
         (a QUIC v1 connection ID is at most 20, with the first octet)"
    )]
    TooLong { server_id_len: u8, nonce_len: u8 },
    #[error("{0:?} is not name=value (expected config=0,server-id-len=2,nonce-len=6[,key=HEX])")]
    NotNameValue(String),
    #[error("unknown field {0:?}: the fields are config, server-id-len, nonce-len and key")]
    UnknownField(String),
    #[error("{0} is given twice")]
    Duplicate(&'static str),
    #[error("{0} is missing (expected config=0,server-id-len=2,nonce-len=6[,key=HEX])")]
    Missing(&'static str),
    #[error("{field}={value:?} is not a whole number from 0 to 255")]
    NotNumber { field: &'static str, value: String },
    #[error("key has {0} characters: it must be 32 hex digits (16 octets)")]
    KeyLen(usize),
    #[error("key has a character that is not a hex digit: {0:?}")]
    KeyNotHex(char),
}

impl Config {
    /// Checks the limits of §5.3 and the YANG model (appendix A): config ID 0 to 6, server ID 1 to 15
    /// octets, nonce 4 to 18 octets, the two at most 19 together.
    pub fn new(
        config_id: u8,
        server_id_len: u8,
        nonce_len: u8,
        key: Option<[u8; KEY_LEN]>,
    ) -> Result<Self, ConfigError> {
        if config_id > MAX_CONFIG_ID {
            return Err(ConfigError::ConfigId(config_id));
        }
        if !(1..=15).contains(&server_id_len) {
            return Err(ConfigError::ServerIdLen(server_id_len));
        }
        if !(4..=18).contains(&nonce_len) {
            return Err(ConfigError::NonceLen(nonce_len));
        }
        if usize::from(server_id_len) + usize::from(nonce_len) > MAX_PLAINTEXT_LEN {
            return Err(ConfigError::TooLong {
                server_id_len,
                nonce_len,
            });
        }
        Ok(Self {
            id: config_id,
            server_id_len,
            nonce_len,
            key,
        })
    }

    /// The config rotation bits: the top 3 bits of every CID's first octet.
    pub fn config_id(&self) -> u8 {
        self.id
    }

    pub fn server_id_len(&self) -> usize {
        usize::from(self.server_id_len)
    }

    pub fn nonce_len(&self) -> usize {
        usize::from(self.nonce_len)
    }

    pub fn key(&self) -> Option<&[u8; KEY_LEN]> {
        self.key.as_ref()
    }

    /// Server ID and nonce: the octets after the first, encrypted or not.
    pub fn plaintext_len(&self) -> usize {
        self.server_id_len() + self.nonce_len()
    }

    /// The length of every CID of this configuration, first octet included.
    pub fn cid_len(&self) -> usize {
        1 + self.plaintext_len()
    }

    pub fn mode(&self) -> Mode {
        match self.key {
            None => Mode::Plaintext,
            Some(_) if self.plaintext_len() == 16 => Mode::SinglePass,
            Some(_) => Mode::FourPass,
        }
    }
}

/// The key is left out: a configuration is logged more often than it should be read.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("config_id", &self.id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("key", &self.key.map(|_| "<16 octets>"))
            .finish()
    }
}

/// The CLI form, key included (so that it parses back to the same configuration).
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config={},server-id-len={},nonce-len={}",
            self.id, self.server_id_len, self.nonce_len
        )?;
        if let Some(key) = &self.key {
            write!(f, ",key={}", crate::hex::encode(key))?;
        }
        Ok(())
    }
}

impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut config_id = None;
        let mut server_id_len = None;
        let mut nonce_len = None;
        let mut key = None;
        for field in text.split(',') {
            let Some((name, value)) = field.split_once('=') else {
                return Err(ConfigError::NotNameValue(field.to_owned()));
            };
            match name.trim() {
                "config" => set(&mut config_id, "config", parse_u8("config", value)?)?,
                "server-id-len" => set(
                    &mut server_id_len,
                    "server-id-len",
                    parse_u8("server-id-len", value)?,
                )?,
                "nonce-len" => set(&mut nonce_len, "nonce-len", parse_u8("nonce-len", value)?)?,
                "key" => set(&mut key, "key", parse_key(value.trim())?)?,
                other => return Err(ConfigError::UnknownField(other.to_owned())),
            }
        }
        Self::new(
            config_id.ok_or(ConfigError::Missing("config"))?,
            server_id_len.ok_or(ConfigError::Missing("server-id-len"))?,
            nonce_len.ok_or(ConfigError::Missing("nonce-len"))?,
            key,
        )
    }
}

fn set<T>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), ConfigError> {
    if slot.replace(value).is_some() {
        return Err(ConfigError::Duplicate(field));
    }
    Ok(())
}

fn parse_u8(field: &'static str, value: &str) -> Result<u8, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::NotNumber {
        field,
        value: value.to_owned(),
    })
}

/// The key's own errors: a hex error would quote the text, which is most of a key.
fn parse_key(value: &str) -> Result<[u8; KEY_LEN], ConfigError> {
    if let Some(bad) = value.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(ConfigError::KeyNotHex(bad));
    }
    let bytes = crate::hex::decode(value).map_err(|_| ConfigError::KeyLen(value.len()))?;
    bytes
        .try_into()
        .map_err(|_| ConfigError::KeyLen(value.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "8f95f09245765f80256934e50c66207f";

    #[test]
    fn the_cli_form_parses_and_prints_back() {
        let plain: Config = "config=0,server-id-len=2,nonce-len=6".parse().unwrap();
        assert_eq!(plain, Config::new(0, 2, 6, None).unwrap());
        assert_eq!(plain.to_string(), "config=0,server-id-len=2,nonce-len=6");
        assert_eq!(plain.mode(), Mode::Plaintext);
        assert_eq!(plain.cid_len(), 9);

        let text = format!("config=6,server-id-len=8,nonce-len=8,key={KEY}");
        let keyed: Config = text.parse().unwrap();
        assert_eq!(keyed.to_string(), text);
        assert_eq!(keyed.mode(), Mode::SinglePass);
        assert_eq!(keyed.key().map(|k| k[0]), Some(0x8f));
        assert!(!format!("{keyed:?}").contains(KEY), "Debug hides the key");

        // Any order, spaces around the names and values, upper-case hex.
        let reordered: Config = format!(
            " key={} , nonce-len=9,server-id-len=3,config=1",
            KEY.to_uppercase()
        )
        .parse()
        .unwrap();
        assert_eq!(
            reordered,
            Config::new(1, 3, 9, keyed.key().copied()).unwrap()
        );
        assert_eq!(reordered.mode(), Mode::FourPass);
    }

    #[test]
    fn every_limit_of_the_draft_is_checked() {
        assert_eq!(Config::new(7, 2, 6, None), Err(ConfigError::ConfigId(7)));
        assert_eq!(Config::new(0, 0, 6, None), Err(ConfigError::ServerIdLen(0)));
        assert_eq!(
            Config::new(0, 16, 4, None),
            Err(ConfigError::ServerIdLen(16))
        );
        assert_eq!(Config::new(0, 1, 3, None), Err(ConfigError::NonceLen(3)));
        assert_eq!(Config::new(0, 1, 19, None), Err(ConfigError::NonceLen(19)));
        assert_eq!(
            Config::new(0, 15, 5, None),
            Err(ConfigError::TooLong {
                server_id_len: 15,
                nonce_len: 5
            })
        );
        // The extremes that fit.
        Config::new(6, 15, 4, None).unwrap();
        Config::new(0, 1, 18, None).unwrap();
        Config::new(0, 1, 4, None).unwrap();
    }

    #[test]
    fn bad_text_names_what_is_wrong() {
        let err = |text: &str| text.parse::<Config>().unwrap_err();
        assert_eq!(
            err("config=0,server-id-len=2,nonce-len=6,colour=red"),
            ConfigError::UnknownField("colour".into())
        );
        assert_eq!(
            err("config=0,nonce-len=6"),
            ConfigError::Missing("server-id-len")
        );
        assert_eq!(
            err("server-id-len=2,nonce-len=6"),
            ConfigError::Missing("config")
        );
        assert_eq!(
            err("config=0,server-id-len=2"),
            ConfigError::Missing("nonce-len")
        );
        assert_eq!(err(""), ConfigError::NotNameValue(String::new()));
        assert_eq!(
            err("config=0,server-id-len=2,nonce-len=6,"),
            ConfigError::NotNameValue(String::new())
        );
        assert_eq!(
            err("config=0,config=1,server-id-len=2,nonce-len=6"),
            ConfigError::Duplicate("config")
        );
        assert_eq!(
            err("config=0,server-id-len=two,nonce-len=6"),
            ConfigError::NotNumber {
                field: "server-id-len",
                value: "two".into()
            }
        );
        assert_eq!(
            err("config=0,server-id-len=2,nonce-len=300"),
            ConfigError::NotNumber {
                field: "nonce-len",
                value: "300".into()
            }
        );
        assert_eq!(
            err("config=7,server-id-len=2,nonce-len=6"),
            ConfigError::ConfigId(7)
        );
        assert_eq!(
            err("config=0,server-id-len=2,nonce-len=6,key=00"),
            ConfigError::KeyLen(2)
        );
        assert_eq!(
            err(&format!("config=0,server-id-len=2,nonce-len=6,key={KEY}00")),
            ConfigError::KeyLen(34)
        );
        assert_eq!(
            err("config=0,server-id-len=2,nonce-len=6,key=8f95f09245765f80256934e50c66207g"),
            ConfigError::KeyNotHex('g')
        );
        // The message names the value.
        assert_eq!(
            err("config=0,server-id-len=16,nonce-len=4").to_string(),
            "server id length 16 is out of range 1 to 15 octets"
        );
    }
}
