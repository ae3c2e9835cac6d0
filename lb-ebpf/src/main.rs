//! The lb XDP program: every packet on the attached interfaces enters at [`lb`].
#![no_std]
#![no_main]

mod maps;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::stats::Stat;

use crate::parse::{L3, Parsed};

/// What the datapath decided for one packet, and why.
struct Outcome {
    action: u32,
    reason: Stat,
}

impl Outcome {
    const fn pass(reason: Stat) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            reason,
        }
    }
}

#[xdp]
pub fn lb(ctx: XdpContext) -> u32 {
    let len = ctx.data_end() - ctx.data();
    let outcome = process(&ctx);
    stats::count(Stat::for_action(outcome.action), len);
    stats::count(outcome.reason, len);
    outcome.action
}

fn process(ctx: &XdpContext) -> Outcome {
    let packet = match parse::parse(ctx) {
        Ok(Parsed::NotIp) => return Outcome::pass(Stat::PassNotIp),
        Ok(Parsed::Ip(packet)) => packet,
        // Malformed packets are not ours to judge: the kernel stack drops or answers them.
        Err(malformed) => return Outcome::pass(malformed.reason()),
    };
    match packet.l3 {
        L3::V4 { .. } | L3::V6 { .. } => Outcome::pass(Stat::PassNotVip),
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
