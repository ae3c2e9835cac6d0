//! The files lb keeps on disk: the daemon's state file and `lb decap`'s record. Reading
//! with a size limit, atomic replacement, and the clean-up of temporaries a crash left.
//! The model parses and renders their text; this layer does the file I/O, so the model
//! stays pure.

pub mod atomic;
pub mod decap_record;
pub mod state_file;
