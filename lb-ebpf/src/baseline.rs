//! Two reference programs for `cargo xtask bench`, loaded only by it: what any XDP program
//! costs (`baseline_pass`), and the least a forwarding one can do (`baseline_floor`: swap
//! the MACs and bounce the frame). The datapath's figures are reported as ratios to these.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn baseline_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 MAC bytes are in bounds (checked above) and nothing else aliases them.
    let macs = unsafe { &mut *(start as *mut [u8; 12]) };
    for i in 0..6 {
        macs.swap(i, i + 6);
    }
    xdp_action::XDP_TX
}
