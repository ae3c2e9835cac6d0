//! The attached interfaces' MACs in the datapath's LOCAL_MACS: frames addressed to other
//! MACs are the kernel's (docs/ARCHITECTURE.md, "Frames for other hosts").

use crate::{
    control::map_sync::MapSync,
    datapath::attach::{self, Interface},
};

/// Records the attached interfaces' MACs in the datapath (none with `--forward-any-mac`):
/// frames for other MACs are then passed to the kernel. An interface whose MAC cannot be
/// read keeps what was recorded for it (nothing at the first start: frames for other
/// hosts arriving there are forwarded); `warn` says so in the log, else at debug level.
pub(crate) fn record(
    map_sync: &mut MapSync,
    ifaces: &[Interface],
    any_mac: bool,
    warn: bool,
) -> Result<(), aya::maps::MapError> {
    if any_mac {
        return map_sync.set_local_macs(&[], &[]);
    }
    let mut macs = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        match attach::hardware_address(&iface.name) {
            Ok(mac) => macs.push((iface.index, mac)),
            Err(error) if warn => tracing::warn!(
                iface = %iface.name,
                %error,
                "cannot read the interface's MAC: frames for other hosts arriving there are forwarded"
            ),
            Err(error) => {
                tracing::debug!(iface = %iface.name, %error, "cannot read the interface's MAC")
            }
        }
    }
    let attached: Vec<u32> = ifaces.iter().map(|iface| iface.index).collect();
    map_sync.set_local_macs(&macs, &attached)
}
