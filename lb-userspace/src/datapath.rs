//! The embedded XDP object and loading it.

use aya::{Ebpf, EbpfLoader, programs::Xdp};
use lb_common::consts::PROGRAM_NAME;

/// The eBPF object built by build.rs from `lb-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Parses `object` and creates its maps; the program is not loaded into the kernel yet.
pub fn open(object: &[u8]) -> Result<Ebpf, aya::EbpfError> {
    EbpfLoader::new().load(object)
}

/// The XDP program of an opened object.
pub fn program(ebpf: &mut Ebpf) -> Option<&mut Xdp> {
    ebpf.program_mut(PROGRAM_NAME)?.try_into().ok()
}
