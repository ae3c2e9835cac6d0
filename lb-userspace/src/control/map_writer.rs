//! What `MapSync` needs from the service maps, as a trait: the real maps implement it,
//! and `MapSync`'s tests use a recording fake to check the order of the writes without
//! root.

use aya::maps::MapError;
use lb_common::{
    gue::EarlierHops,
    quic::{QuicConfigs, QuicServerKey},
    service::{Backend, Endpoint, EndpointKey, SourceRange, VipInfo, VipKey},
};

use crate::datapath::maps::ServiceMaps;

/// The reads and writes that make the service maps match a state.
pub trait MapWriter {
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, MapError>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapError>;
    fn endpoint_keys(&self) -> Result<Vec<EndpointKey>, MapError>;
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError>;
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError>;
    fn set_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MapError>;
    fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapError>;
    /// Writes one of a VIP's two Maglev tables (`table` is 0 or 1).
    fn write_table(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError>;
    /// Sets the earlier hops (dsr-gue) of slots of one of a VIP's two tables.
    fn write_hops(
        &mut self,
        vip_id: u32,
        table: u8,
        hops: &[(u32, EarlierHops)],
    ) -> Result<(), MapError>;
    /// Removes the earlier hops of `slots` of one of a VIP's two tables.
    fn clear_hops(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError>;
    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<(), MapError>;
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapError>;
    /// Every SOURCE_RANGES key, as (LPM prefix length, data).
    fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>, MapError>;
    fn set_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<(), MapError>;
    fn remove_source_range(&mut self, prefix_len: u32, range: &SourceRange)
    -> Result<(), MapError>;
    /// Sets QUIC_CONFIGS at a VIP's id.
    fn set_quic_configs(&mut self, vip_id: u32, configs: &QuicConfigs) -> Result<(), MapError>;
    /// Routes a server id (under one config of a VIP) to a backend id.
    fn set_quic_server(&mut self, key: &QuicServerKey, backend_id: u32) -> Result<(), MapError>;
    fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), MapError>;
}

impl MapWriter for ServiceMaps {
    fn vips(&self) -> Result<Vec<(VipKey, VipInfo)>, MapError> {
        ServiceMaps::vips(self)
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, MapError> {
        ServiceMaps::backends(self)
    }
    fn endpoint_keys(&self) -> Result<Vec<EndpointKey>, MapError> {
        ServiceMaps::endpoint_keys(self)
    }
    fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError> {
        ServiceMaps::set_vip(self, key, info)
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
        ServiceMaps::remove_vip(self, key)
    }
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        ServiceMaps::set_backend(self, id, backend)
    }
    fn set_endpoint(&mut self, key: &EndpointKey, value: &Endpoint) -> Result<(), MapError> {
        ServiceMaps::set_endpoint(self, key, value)
    }
    fn remove_endpoint(&mut self, key: &EndpointKey) -> Result<(), MapError> {
        ServiceMaps::remove_endpoint(self, key)
    }
    fn write_table(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
        ServiceMaps::write_table(self, vip_id, table, slots)
    }
    fn write_hops(
        &mut self,
        vip_id: u32,
        table: u8,
        hops: &[(u32, EarlierHops)],
    ) -> Result<(), MapError> {
        ServiceMaps::write_hops(self, vip_id, table, hops)
    }
    fn clear_hops(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
        ServiceMaps::clear_hops(self, vip_id, table, slots)
    }
    fn reset_vip_counters(&mut self, vip_id: u32) -> Result<(), MapError> {
        ServiceMaps::reset_vip_counters(self, vip_id)
    }
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), MapError> {
        ServiceMaps::reset_backend_counters(self, id)
    }
    fn source_ranges(&self) -> Result<Vec<(u32, SourceRange)>, MapError> {
        ServiceMaps::source_ranges(self)
    }
    fn set_source_range(&mut self, prefix_len: u32, range: &SourceRange) -> Result<(), MapError> {
        ServiceMaps::set_source_range(self, prefix_len, range)
    }
    fn remove_source_range(
        &mut self,
        prefix_len: u32,
        range: &SourceRange,
    ) -> Result<(), MapError> {
        ServiceMaps::remove_source_range(self, prefix_len, range)
    }
    fn set_quic_configs(&mut self, vip_id: u32, configs: &QuicConfigs) -> Result<(), MapError> {
        ServiceMaps::set_quic_configs(self, vip_id, configs)
    }
    fn set_quic_server(&mut self, key: &QuicServerKey, backend_id: u32) -> Result<(), MapError> {
        ServiceMaps::set_quic_server(self, key, backend_id)
    }
    fn remove_quic_server(&mut self, key: &QuicServerKey) -> Result<(), MapError> {
        ServiceMaps::remove_quic_server(self, key)
    }
}
