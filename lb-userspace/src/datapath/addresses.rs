//! The ADDRESSES buckets: which hash buckets hold a VIP or a backend address, so that the
//! datapath skips the VIPS and ENDPOINTS lookups for packets of neither. A bucket's bit is
//! set before the first address in it is added to its map and cleared after the last one
//! is removed, so a packet never finds the bit clear while an address in it is live (a
//! bit set too early only costs the datapath a hash lookup).

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{Array, MapData, MapError};
use lb_common::{
    consts::{ADDRESS_BACKEND, ADDRESS_VIP},
    hash::address_bucket,
    service::Addr,
};

/// What an address is, for its bucket's bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Vip,
    Backend,
}

impl Kind {
    const fn bit(self) -> u32 {
        match self {
            Self::Vip => ADDRESS_VIP,
            Self::Backend => ADDRESS_BACKEND,
        }
    }
}

/// Which addresses are present, and the bits of each bucket they fall in (pure: the map
/// writes are the caller's).
#[derive(Default)]
pub(crate) struct Buckets {
    present: BTreeSet<(Kind, u8, Addr)>,
    /// Per bucket, how many present addresses of each kind fall in it.
    counts: BTreeMap<u32, [u32; 2]>,
}

impl Buckets {
    /// Records `addr`; returns the bucket and its new bits if they changed.
    pub(crate) fn add(&mut self, kind: Kind, addr: &Addr, family: u8) -> Option<(u32, u32)> {
        if !self.present.insert((kind, family, *addr)) {
            return None;
        }
        let bucket = address_bucket(addr, family);
        let count = self.counts.entry(bucket).or_default();
        count[kind as usize] += 1;
        (count[kind as usize] == 1).then(|| (bucket, self.bits(bucket)))
    }

    /// Forgets `addr`; returns the bucket and its new bits if they changed.
    pub(crate) fn remove(&mut self, kind: Kind, addr: &Addr, family: u8) -> Option<(u32, u32)> {
        if !self.present.remove(&(kind, family, *addr)) {
            return None;
        }
        let bucket = address_bucket(addr, family);
        let count = self.counts.entry(bucket).or_default();
        count[kind as usize] -= 1;
        let changed = count[kind as usize] == 0;
        if *count == [0, 0] {
            self.counts.remove(&bucket);
        }
        changed.then(|| (bucket, self.bits(bucket)))
    }

    /// Records every address of `entries` at once (adopting pinned maps): the bucket of
    /// each with its final bits, once per bucket, sorted. Written in this order no bucket
    /// ever shows fewer bits than its addresses need: address by address, a bucket shared
    /// by a VIP and a backend address would first be written with the VIP's bit alone,
    /// clearing the backend's bit that the pinned map rightly had until the backend's
    /// address came round, and that backend's replies would pass untranslated meanwhile.
    pub(crate) fn add_all(
        &mut self,
        entries: impl IntoIterator<Item = (Kind, Addr, u8)>,
    ) -> Vec<(u32, u32)> {
        let mut changed = BTreeSet::new();
        for (kind, addr, family) in entries {
            if let Some((bucket, _)) = self.add(kind, &addr, family) {
                changed.insert(bucket);
            }
        }
        changed
            .into_iter()
            .map(|bucket| (bucket, self.bits(bucket)))
            .collect()
    }

    /// The `ADDRESS_*` bits of `bucket`.
    pub(crate) fn bits(&self, bucket: u32) -> u32 {
        let count = self.counts.get(&bucket).copied().unwrap_or_default();
        [Kind::Vip, Kind::Backend]
            .into_iter()
            .filter(|kind| count[*kind as usize] > 0)
            .fold(0, |bits, kind| bits | kind.bit())
    }
}

/// The ADDRESSES map and what is in it.
pub(crate) struct AddressClasses {
    map: Array<MapData, u32>,
    buckets: Buckets,
}

impl AddressClasses {
    pub(crate) fn new(map: Array<MapData, u32>) -> Self {
        Self {
            map,
            buckets: Buckets::default(),
        }
    }

    /// The ADDRESSES map itself, for a second handle on it.
    pub(crate) fn map_data(&self) -> &MapData {
        aya::maps::IterableMap::map(&self.map)
    }

    /// Call before the address's entry is added to its map.
    pub(crate) fn add(&mut self, kind: Kind, addr: &Addr, family: u8) -> Result<(), MapError> {
        let Some((bucket, bits)) = self.buckets.add(kind, addr, family) else {
            return Ok(());
        };
        let written = self.map.set(bucket, bits, 0);
        if written.is_err() {
            // Not recorded, so that a retry writes the bit again.
            self.buckets.remove(kind, addr, family);
        }
        written
    }

    /// Sets the buckets of addresses already in their maps (pinned maps adopted from an
    /// earlier controller): each bucket written once, with every bit its addresses need
    /// ([`Buckets::add_all`]), so a bucket the pinned map has right is never cleared.
    pub(crate) fn adopt(
        &mut self,
        entries: impl IntoIterator<Item = (Kind, Addr, u8)>,
    ) -> Result<(), MapError> {
        for (bucket, bits) in self.buckets.add_all(entries) {
            self.map.set(bucket, bits, 0)?;
        }
        Ok(())
    }

    /// Call after the address's entry is removed from its map.
    pub(crate) fn remove(&mut self, kind: Kind, addr: &Addr, family: u8) -> Result<(), MapError> {
        match self.buckets.remove(kind, addr, family) {
            Some((bucket, bits)) => self.map.set(bucket, bits, 0),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(last: u8) -> Addr {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 18, 1, last]);
        addr
    }

    #[test]
    fn a_bucket_keeps_its_bit_until_its_last_address_goes() {
        let mut buckets = Buckets::default();
        let a = v4(1);
        let bucket = address_bucket(&a, 4);
        assert_eq!(buckets.add(Kind::Vip, &a, 4), Some((bucket, ADDRESS_VIP)));
        // Twice the same address: no change, and one removal clears it.
        assert_eq!(buckets.add(Kind::Vip, &a, 4), None);
        assert_eq!(
            buckets.add(Kind::Backend, &a, 4),
            Some((bucket, ADDRESS_VIP | ADDRESS_BACKEND))
        );
        assert_eq!(
            buckets.remove(Kind::Vip, &a, 4),
            Some((bucket, ADDRESS_BACKEND))
        );
        assert_eq!(buckets.remove(Kind::Vip, &a, 4), None);
        assert_eq!(buckets.remove(Kind::Backend, &a, 4), Some((bucket, 0)));
        assert_eq!(buckets.bits(bucket), 0);
    }

    /// An address other than `first` in the same bucket.
    fn collider(first: &Addr) -> Addr {
        let bucket = address_bucket(first, 4);
        (0..=65_535u32)
            .map(|n| {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&(0xc612_0000 | n).to_be_bytes());
                addr
            })
            .find(|addr| addr != first && address_bucket(addr, 4) == bucket)
            .expect("some address shares the bucket")
    }

    #[test]
    fn adoption_writes_each_bucket_once_with_all_its_bits() {
        // A VIP and a backend address in one bucket, a VIP alone in another, a backend
        // alone in a third; VIPS is walked before ENDPOINTS, as `ServiceMaps::take` does.
        let vip = v4(1);
        let backend = collider(&vip);
        let shared = address_bucket(&vip, 4);
        let lone_vip = (2..=255)
            .map(v4)
            .find(|a| address_bucket(a, 4) != shared)
            .expect("another bucket");
        let lone_backend = (2..=255)
            .map(v4)
            .find(|a| ![shared, address_bucket(&lone_vip, 4)].contains(&address_bucket(a, 4)))
            .expect("a third bucket");
        let entries = [
            (Kind::Vip, vip, 4),
            (Kind::Vip, lone_vip, 4),
            (Kind::Backend, backend, 4),
            (Kind::Backend, lone_backend, 4),
        ];
        // What the pinned ADDRESSES map holds, rightly, when a controller adopts it.
        let mut pinned: BTreeMap<u32, u32> = BTreeMap::new();
        for (kind, addr, family) in &entries {
            *pinned.entry(address_bucket(addr, *family)).or_default() |= kind.bit();
        }
        let before = pinned.clone();
        let mut buckets = Buckets::default();
        let writes = buckets.add_all(entries);
        let mut written = BTreeSet::new();
        for (bucket, bits) in &writes {
            assert!(written.insert(*bucket), "bucket {bucket} written twice");
            pinned.insert(*bucket, *bits);
            // No write, at any point, takes away a bit the pinned map rightly had.
            for (bucket, bits) in &before {
                assert_eq!(
                    pinned[bucket] & bits,
                    *bits,
                    "bucket {bucket} lost a bit during adoption: {writes:?}"
                );
            }
        }
        assert_eq!(pinned, before, "every bucket ends as the entries say");
        assert_eq!(buckets.bits(shared), ADDRESS_VIP | ADDRESS_BACKEND);
        // Later changes go on from the adopted state.
        assert_eq!(buckets.add(Kind::Vip, &vip, 4), None);
        assert_eq!(
            buckets.remove(Kind::Vip, &vip, 4),
            Some((shared, ADDRESS_BACKEND))
        );
    }

    #[test]
    fn colliding_addresses_share_a_bit() {
        let mut buckets = Buckets::default();
        let first = v4(1);
        let bucket = address_bucket(&first, 4);
        let other = (2..=255)
            .map(v4)
            .chain((0..=65_535u32).map(|n| {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&(0xc612_0000 | n).to_be_bytes());
                addr
            }))
            .find(|addr| *addr != first && address_bucket(addr, 4) == bucket)
            .expect("some address shares the bucket");
        buckets.add(Kind::Vip, &first, 4);
        assert_eq!(buckets.add(Kind::Vip, &other, 4), None);
        assert_eq!(buckets.remove(Kind::Vip, &first, 4), None);
        assert_eq!(buckets.bits(bucket), ADDRESS_VIP);
        assert_eq!(buckets.remove(Kind::Vip, &other, 4), Some((bucket, 0)));
    }
}
