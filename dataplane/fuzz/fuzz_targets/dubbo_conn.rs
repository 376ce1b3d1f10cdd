//! The Dubbo connection state machines (consumer side, upstream pool, provider side) driven by
//! a script of consumer and provider actions: see `dataplane::fuzzing::dubbo`.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod alloc;

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fuzz_target!(|data: &[u8]| {
    dataplane::fuzzing::dubbo::run(data, alloc::live_bytes);
});
