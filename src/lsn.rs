//! `Lsn`: a position in PostgreSQL's write-ahead log, the unit of every checkpoint lakewriter
//! keeps. Written `16/B374D848` (high and low 32 bits in hex) as PostgreSQL writes it.

use std::fmt;
use std::str::FromStr;

/// A write-ahead log position. Ordered, so "at or below the checkpoint" is a comparison.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before everything (`0/0`).
    pub const ZERO: Lsn = Lsn(0);

    /// The raw 64-bit position.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// How many bytes of WAL lie between `earlier` and `self` (0 when `earlier` is later).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// The text is not an LSN of the form `16/B374D848`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an LSN (expected the form 16/B374D848)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || ParseLsnError(text.to_string());
        let (high, low) = text.trim().split_once('/').ok_or_else(fail)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| fail())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| fail())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl From<pgwire_replication::Lsn> for Lsn {
    fn from(lsn: pgwire_replication::Lsn) -> Self {
        Lsn(lsn.as_u64())
    }
}

impl From<Lsn> for pgwire_replication::Lsn {
    fn from(lsn: Lsn) -> Self {
        pgwire_replication::Lsn::from_u64(lsn.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prints_and_parses_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!("16/B374D848".parse(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("0/0".parse(), Ok(Lsn::ZERO));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert!(
            "1/100000000".parse::<Lsn>().is_err(),
            "the low half is 32 bits"
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(raw in any::<u64>()) {
            prop_assert_eq!(Lsn(raw).to_string().parse::<Lsn>(), Ok(Lsn(raw)));
        }
    }
}
