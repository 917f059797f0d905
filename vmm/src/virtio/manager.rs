//! `VirtioDevices`: every virtio device of one VM, placed in its window and IRQ (see `layout`),
//! with the few operations the core needs: irqfd registration, the kernel command line, MMIO
//! dispatch from vCPU exits, the tap event thread, pause/resume around state capture, and
//! save/restore of all devices at once. Devices are created in a fixed order (disks, NICs, rng),
//! so a VM rebuilt from the same description gets the same windows and IRQs.

use std::sync::{Arc, Mutex, RwLock};

use kvm_ioctls::VmFd;

use super::block::{Block, BlockConfig, DiskChange, DiskWriteObserver};
use super::event_loop::{EventLoop, EventLoopHandle};
use super::layout::{DeviceSlot, MAX_VIRTIO_DEVICES};
use super::mmio::{MmioState, MmioTransport};
use super::net::{GateMode, Net, NetConfig, NetOutput};
use super::rng::Rng;
use super::{StateError, VirtioDevice, VirtioMem};
use crate::spec::VmSpec;
use crate::sync::lock;

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("{count} virtio devices asked for, at most {MAX_VIRTIO_DEVICES}")]
    TooMany { count: usize },
    #[error("virtio-blk {index}: {source}")]
    Disk {
        index: usize,
        source: super::block::DiskError,
    },
    #[error("virtio-net {index}: {source}")]
    Net {
        index: usize,
        source: super::net::TapError,
    },
    #[error("virtio-{kind} at {base:#x}: creating its interrupt eventfd: {source}")]
    Interrupt {
        kind: &'static str,
        base: u64,
        source: std::io::Error,
    },
    #[error("virtio-{kind}: KVM irqfd on IRQ {irq}: {source}")]
    Irqfd {
        kind: &'static str,
        irq: u32,
        source: kvm_ioctls::Error,
    },
    #[error("virtio event thread: {0}")]
    EventLoop(std::io::Error),
    #[error("saved state has {saved} virtio devices, this VM has {here}")]
    StateCount { saved: usize, here: usize },
    #[error("virtio device {index} ({kind} at {base:#x}): {source}")]
    State {
        index: usize,
        kind: &'static str,
        base: u64,
        source: StateError,
    },
}

/// The virtio part of a VM description.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VirtioConfig {
    pub disks: Vec<BlockConfig>,
    pub nets: Vec<NetConfig>,
    pub rng: bool,
}

impl VirtioConfig {
    /// The devices a `VmSpec` asks for (discard off, gates off until replication starts).
    pub fn from_spec(spec: &VmSpec) -> Self {
        VirtioConfig {
            disks: spec
                .disks
                .iter()
                .map(|d| BlockConfig {
                    path: d.path.clone(),
                    read_only: d.readonly,
                    discard: false,
                })
                .collect(),
            nets: spec
                .nets
                .iter()
                .map(|n| NetConfig {
                    tap: n.tap.clone(),
                    mac: n.mac,
                    gate: GateMode::Off,
                })
                .collect(),
            rng: spec.rng,
        }
    }
}

/// Observer of disk changes of every disk: (disk index, change).
pub type DisksObserver = Arc<dyn Fn(usize, DiskChange) + Send + Sync>;

/// One placed device.
pub struct PlacedDevice {
    pub slot: DeviceSlot,
    pub kind: &'static str,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// All virtio devices of a VM.
pub struct VirtioDevices {
    devices: Vec<PlacedDevice>,
    nets: Vec<NetOutput>,
    /// Where every disk reports its changes; replaceable while the VM runs.
    disk_observer: Arc<RwLock<Option<DisksObserver>>>,
    event_loop: Option<EventLoopHandle>,
}

impl VirtioDevices {
    /// Opens every backend (image files, taps) and builds the devices in slot order.
    pub fn create(
        cfg: &VirtioConfig,
        mem: &VirtioMem,
        observer: Option<DisksObserver>,
    ) -> Result<Self, VirtioError> {
        let count = cfg.disks.len() + cfg.nets.len() + usize::from(cfg.rng);
        if count > MAX_VIRTIO_DEVICES {
            return Err(VirtioError::TooMany { count });
        }
        let disk_observer = Arc::new(RwLock::new(observer));
        let mut boxed: Vec<Box<dyn VirtioDevice>> = Vec::with_capacity(count);
        let mut nets = Vec::new();
        for (index, d) in cfg.disks.iter().enumerate() {
            let mut blk = Block::new(d).map_err(|source| VirtioError::Disk { index, source })?;
            let slot = disk_observer.clone();
            let per_disk: Arc<dyn DiskWriteObserver> = Arc::new(move |c: DiskChange| {
                let current = slot.read().unwrap_or_else(|p| p.into_inner());
                if let Some(obs) = current.as_ref() {
                    obs(index, c);
                }
            });
            blk.set_observer(per_disk);
            boxed.push(Box::new(blk));
        }
        for (index, n) in cfg.nets.iter().enumerate() {
            let net = Net::with_tap(n).map_err(|source| VirtioError::Net { index, source })?;
            nets.push(net.output());
            boxed.push(Box::new(net));
        }
        if cfg.rng {
            boxed.push(Box::new(Rng::new()));
        }
        let mut devices = Vec::with_capacity(count);
        for (i, dev) in boxed.into_iter().enumerate() {
            // `count` was checked against the number of slots above.
            let Some(slot) = DeviceSlot::new(i) else {
                return Err(VirtioError::TooMany { count });
            };
            let kind = dev.kind();
            let transport =
                MmioTransport::new(dev, mem.clone()).map_err(|source| VirtioError::Interrupt {
                    kind,
                    base: slot.base,
                    source,
                })?;
            devices.push(PlacedDevice {
                slot,
                kind,
                transport: Arc::new(Mutex::new(transport)),
            });
        }
        Ok(VirtioDevices {
            devices,
            nets,
            disk_observer,
            event_loop: None,
        })
    }

    pub fn devices(&self) -> &[PlacedDevice] {
        &self.devices
    }

    /// Starts (Some) or stops (None) reporting disk changes, e.g. when replication of this VM
    /// starts or the peer is lost. Takes effect for the next completed request.
    pub fn set_disk_observer(&self, observer: Option<DisksObserver>) {
        *self
            .disk_observer
            .write()
            .unwrap_or_else(|p| p.into_inner()) = observer;
    }

    /// Output gates of the NICs, in `VirtioConfig::nets` order (for the supervisor).
    pub fn net_outputs(&self) -> &[NetOutput] {
        &self.nets
    }

    /// Wires every device's interrupt eventfd to its IRQ line (after the irqchip exists).
    pub fn register_irqfds(&self, vm: &VmFd) -> Result<(), VirtioError> {
        for d in &self.devices {
            let t = lock(&d.transport);
            vm.register_irqfd(t.interrupt_eventfd(), d.slot.irq)
                .map_err(|source| VirtioError::Irqfd {
                    kind: d.kind,
                    irq: d.slot.irq,
                    source,
                })?;
        }
        Ok(())
    }

    /// AML declaring every device (`LNRO0005`, window, IRQ) to append to the DSDT: how
    /// distribution kernels, built without virtio-mmio command line support, find them.
    pub fn acpi_aml(&self) -> Vec<u8> {
        let slots: Vec<DeviceSlot> = self.devices.iter().map(|d| d.slot).collect();
        super::acpi::dsdt_aml(&slots)
    }

    /// The `virtio_mmio.device=...` arguments to append to the kernel command line (for kernels
    /// with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES; harmless otherwise, but then the devices must
    /// also be in the DSDT, see `acpi_aml`).
    pub fn cmdline_args(&self) -> String {
        self.devices
            .iter()
            .map(|d| d.slot.cmdline_arg())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn find(&self, addr: u64) -> Option<&PlacedDevice> {
        self.devices.iter().find(|d| d.slot.contains(addr))
    }

    /// An MMIO read exit at guest-physical `addr`; false when no virtio window holds it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        let Some(d) = self.find(addr) else {
            return false;
        };
        lock(&d.transport).read(addr - d.slot.base, data);
        true
    }

    /// An MMIO write exit at guest-physical `addr`; false when no virtio window holds it.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        let Some(d) = self.find(addr) else {
            return false;
        };
        lock(&d.transport).write(addr - d.slot.base, data);
        true
    }

    /// Starts the thread that feeds tap traffic to the NICs (no thread without NICs).
    pub fn start_event_loop(&mut self) -> Result<(), VirtioError> {
        if self.event_loop.is_some() {
            return Ok(());
        }
        let mut el = EventLoop::new().map_err(VirtioError::EventLoop)?;
        let mut any = false;
        for d in &self.devices {
            any |= el
                .add_transport(&d.transport)
                .map_err(VirtioError::EventLoop)?;
        }
        if any {
            self.event_loop = Some(el.spawn("virtio-events").map_err(VirtioError::EventLoop)?);
        }
        Ok(())
    }

    /// Stops devices from touching guest memory (before reading dirty pages and state).
    pub fn pause(&self) {
        for d in &self.devices {
            lock(&d.transport).pause();
        }
    }

    /// Lets devices run again and catches up on work that arrived while paused.
    pub fn resume(&self) {
        for d in &self.devices {
            lock(&d.transport).resume();
        }
    }

    /// State of every device in slot order (call between `pause` and `resume`, vCPUs paused).
    pub fn save_state(&self) -> Vec<MmioState> {
        self.devices
            .iter()
            .map(|d| lock(&d.transport).save_state())
            .collect()
    }

    /// Restores devices built from the same description as the saved VM. Call before the
    /// vCPUs run; interrupts pending at capture time are raised again, so register the irqfds
    /// first.
    pub fn restore_state(&self, states: &[MmioState]) -> Result<(), VirtioError> {
        if states.len() != self.devices.len() {
            return Err(VirtioError::StateCount {
                saved: states.len(),
                here: self.devices.len(),
            });
        }
        for (index, (d, s)) in self.devices.iter().zip(states).enumerate() {
            lock(&d.transport)
                .restore_state(s)
                .map_err(|source| VirtioError::State {
                    index,
                    kind: d.kind,
                    base: d.slot.base,
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{mem, read32};
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn devices_get_slots_in_order_and_answer_their_windows() {
        let image = TempFile::new_with_prefix("/tmp/havms-virtio-mgr").unwrap();
        image.as_file().set_len(1 << 20).unwrap();
        let cfg = VirtioConfig {
            disks: vec![BlockConfig {
                path: image.as_path().to_path_buf(),
                read_only: true,
                discard: false,
            }],
            nets: vec![],
            rng: true,
        };
        let mem = mem();
        let mut v = VirtioDevices::create(&cfg, &mem, None).unwrap();
        assert_eq!(
            v.cmdline_args(),
            "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"
        );
        let mut b = [0u8; 4];
        assert!(v.mmio_read(0xd000_1008, &mut b));
        assert_eq!(u32::from_le_bytes(b), 4, "second window is the rng");
        assert!(v.mmio_read(0xd000_0008, &mut b));
        assert_eq!(u32::from_le_bytes(b), 2, "first window is the disk");
        assert!(!v.mmio_read(0xd000_2000, &mut b), "nothing in the third");
        assert!(!v.mmio_write(0xd000_2070, &[0; 4]));
        v.start_event_loop().unwrap();
        assert!(v.event_loop.is_none(), "no NIC, no thread");
        let states = v.save_state();
        assert_eq!(states.len(), 2);
        v.restore_state(&states).unwrap();
        assert!(matches!(
            v.restore_state(&states[..1]),
            Err(VirtioError::StateCount { saved: 1, here: 2 })
        ));
        assert_eq!(read32(&lock(&v.devices()[1].transport), 0), 0x7472_6976);
    }

    #[test]
    fn disk_observer_can_be_set_while_running() {
        use crate::virtio::test_utils::{add_chain, bring_up, put, used_idx, write32, Buf};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::GuestAddress;

        let image = TempFile::new_with_prefix("/tmp/havms-virtio-mgr").unwrap();
        image.as_file().set_len(1 << 20).unwrap();
        let cfg = VirtioConfig {
            disks: vec![BlockConfig {
                path: image.as_path().to_path_buf(),
                read_only: false,
                discard: false,
            }],
            ..Default::default()
        };
        let mem = mem();
        let v = VirtioDevices::create(&cfg, &mem, None).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let t = &v.devices()[0].transport;
        bring_up(&mut lock(t), &[&vq], 16);
        let write = |slot: u16| {
            let mut h = [0u8; 16];
            h[0] = 1; // VIRTIO_BLK_T_OUT, sector 0
            put(&mem, 0x10_0000, &h);
            add_chain(
                &vq,
                slot,
                &[
                    Buf(0x10_0000, 16, false),
                    Buf(0x20_0000, 512, false),
                    Buf(0x30_0000, 1, true),
                ],
            );
            write32(&mut lock(t), 0x50, 0);
        };
        let seen = Arc::new(AtomicUsize::new(0));
        write(0);
        let s = seen.clone();
        v.set_disk_observer(Some(Arc::new(move |disk, c| {
            assert_eq!((disk, c.sector, c.len), (0, 0, 512));
            s.fetch_add(1, Ordering::SeqCst);
        })));
        write(3);
        v.set_disk_observer(None);
        write(6);
        assert_eq!(used_idx(&vq), 3);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "only the write made while observed"
        );
    }

    #[test]
    fn missing_disk_names_the_device_and_path() {
        let cfg = VirtioConfig {
            disks: vec![BlockConfig {
                path: "/nonexistent/vm.img".into(),
                read_only: false,
                discard: false,
            }],
            ..Default::default()
        };
        let e = VirtioDevices::create(&cfg, &mem(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("virtio-blk 0") && e.contains("/nonexistent/vm.img"),
            "{e}"
        );
    }
}
