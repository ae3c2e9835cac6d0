//! Typed access to the service maps of a loaded datapath. The only writer of VIPS,
//! BACKENDS, MAGLEV and TX_PORTS.

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, xdp::DevMapHash},
};
use lb_common::{
    consts::{MAP_BACKENDS, MAP_MAGLEV, MAP_TX_PORTS, MAP_VIPS},
    service::{Backend, VipInfo, VipKey},
};

use crate::datapath::Limits;

pub struct ServiceMaps {
    vips: HashMap<MapData, VipKey, VipInfo>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    tx_ports: DevMapHash<MapData>,
    maglev_size: u32,
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, MapError> {
    ebpf.take_map(name).ok_or_else(|| MapError::InvalidName {
        name: name.to_owned(),
    })
}

impl ServiceMaps {
    pub fn take(ebpf: &mut Ebpf, limits: &Limits) -> Result<Self, MapError> {
        Ok(Self {
            vips: HashMap::try_from(take(ebpf, MAP_VIPS)?)?,
            backends: Array::try_from(take(ebpf, MAP_BACKENDS)?)?,
            maglev: Array::try_from(take(ebpf, MAP_MAGLEV)?)?,
            tx_ports: DevMapHash::try_from(take(ebpf, MAP_TX_PORTS)?)?,
            maglev_size: limits.maglev_size,
        })
    }

    pub fn set_vip(&mut self, key: &VipKey, info: &VipInfo) -> Result<(), MapError> {
        self.vips.insert(key, info, 0)
    }

    pub fn remove_vip(&mut self, key: &VipKey) -> Result<(), MapError> {
        self.vips.remove(key)
    }

    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapError> {
        self.backends.set(id, backend, 0)
    }

    /// Writes one of a VIP's two tables; it is live only after the VIP entry points to it.
    pub fn write_table(&mut self, vip_id: u32, table: u8, slots: &[u32]) -> Result<(), MapError> {
        let base = (vip_id * 2 + u32::from(table & 1)) * self.maglev_size;
        for (slot, id) in slots.iter().enumerate() {
            self.maglev.set(base + slot as u32, id, 0)?;
        }
        Ok(())
    }

    /// Lets XDP_REDIRECT send packets out of `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), aya::maps::xdp::XdpMapError> {
        self.tx_ports.insert(ifindex, ifindex, None, 0)
    }
}
