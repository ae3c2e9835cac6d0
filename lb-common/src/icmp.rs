//! What the ICMP programs keep per CPU: the token bucket that limits the errors the
//! datapath sends, and what `lb` hands to `lb_too_big` across the tail call.

use crate::service::Addr;

/// Tokens left and when the bucket was last refilled (`bpf_ktime_get_coarse_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    pub tokens: u64,
    pub refilled_ns: u64,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for RateBucket {}

impl RateBucket {
    /// Takes one token if there is one, after adding a token per `interval_ns` elapsed
    /// since the last refill (at most `burst`).
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, burst: u64, interval_ns: u64) -> bool {
        let earned = now_ns.saturating_sub(self.refilled_ns) / interval_ns;
        if earned > 0 {
            self.tokens = if self.tokens + earned > burst {
                burst
            } else {
                self.tokens + earned
            };
            self.refilled_ns = now_ns;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What a too-big answer says: the next hop's MTU, and the address it comes from. Written
/// by `lb` into this CPU's slot right before the tail call to `lb_too_big` (XDP runs to
/// completion on a CPU, so nothing else writes the slot in between).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TooBigArgs {
    pub from: Addr,
    pub mtu: u16,
    /// 1 when the packet would have fitted but for a DSR outer header (counted apart).
    pub dsr: u8,
    pub _pad: [u8; 5],
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for TooBigArgs {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let mut bucket = RateBucket::default();
        let taken = (0..100).filter(|_| bucket.take(1_000_000, 50, 10)).count();
        assert_eq!(taken, 50, "a full bucket gives its burst");
        assert!(
            !bucket.take(1_000_005, 50, 10),
            "no token before an interval passed"
        );
        assert!(bucket.take(1_000_010, 50, 10));
        assert!(!bucket.take(1_000_010, 50, 10));
    }
}
