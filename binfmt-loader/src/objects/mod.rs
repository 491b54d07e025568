//! Kernel objects stage 1 creates from the image's records, one module per
//! kind, each handing back the fd the plan maps or places.

pub mod shmem;
