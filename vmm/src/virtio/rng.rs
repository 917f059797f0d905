//! virtio-rng (entropy device): fills every device-writable buffer the guest offers with bytes
//! from the host kernel's getrandom(2).

use std::io::Write;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};

use super::device::{
    signal_used, ActivateError, Activation, DeviceState, StateError, VirtioDevice,
};
use super::interrupt::Interrupt;
use super::VirtioMem;

pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most entropy handed out per request; Linux asks for far less (its hwrng reads are 32-64 B).
const MAX_REQUEST: usize = 64 * 1024;

/// Fills `buf` from getrandom(2), retrying on EINTR and short reads.
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe the writable, live slice `rest`; getrandom
        // writes at most that many bytes into it and keeps no reference.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A virtio-rng device.
pub struct Rng {
    queues: Vec<Queue>,
    active: Option<Activation>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    pub fn new() -> Self {
        Rng {
            // A power of two is always a valid queue size.
            queues: vec![Queue::new(RNG_QUEUE_SIZE).unwrap_or_default()],
            active: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn kind(&self) -> &'static str {
        "rng"
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn queues(&self) -> &[Queue] {
        &self.queues
    }

    fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    fn avail_features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: VirtioMem,
        interrupt: Arc<Interrupt>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        self.active = Some(Activation { mem, interrupt });
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) {
        let Some(active) = &self.active else { return };
        if index != 0 {
            return;
        }
        let mem = &active.mem;
        let queue = &mut self.queues[0];
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match chain.writer(mem) {
                Ok(mut w) => {
                    let mut bytes = vec![0u8; w.available_bytes().min(MAX_REQUEST)];
                    match fill_random(&mut bytes).and_then(|()| w.write_all(&bytes)) {
                        Ok(()) => bytes.len() as u32,
                        Err(e) => {
                            log::warn!("virtio-rng: request {head}: {e}");
                            0
                        }
                    }
                }
                Err(e) => {
                    log::warn!("virtio-rng: request {head}: bad descriptor chain: {e}");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::error!("virtio-rng: completing request {head}: {e}");
                break;
            }
            used_any = true;
        }
        if used_any {
            signal_used(queue, mem, &active.interrupt);
        }
    }

    fn save_state(&self) -> DeviceState {
        DeviceState::Rng
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Rng => Ok(()),
            other => Err(StateError::WrongDevice {
                saved: other.kind(),
                this: "rng",
            }),
        }
    }
}
