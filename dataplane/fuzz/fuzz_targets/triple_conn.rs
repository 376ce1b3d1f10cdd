//! The Triple (HTTP/2) connection state machines, caller side and upstream side, driven by a
//! script of caller and server actions: see `dataplane::fuzzing::triple`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::triple::run(data, alloc::live_bytes);
});
