//! A small epoll thread for host-side device events (the tap of each virtio-net device): the
//! core registers each transport's `backend_fd()` and the thread calls
//! `process_backend_event()` when it becomes readable. Edge-triggered, so a device with no guest
//! buffer left does not spin: it keeps the frame in hand and continues on the guest's next RX
//! notify.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::mmio::MmioTransport;
use crate::sync::lock;

type Handler = Box<dyn FnMut() + Send>;

/// Token of the stop eventfd; handlers get 1, 2, ...
const STOP_TOKEN: u64 = 0;

/// fds and what to do when each is readable; `spawn` moves it to its thread.
pub struct EventLoop {
    epoll: Epoll,
    handlers: HashMap<u64, Handler>,
    stop: EventFd,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            std::os::fd::AsRawFd::as_raw_fd(&stop),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(EventLoop {
            epoll,
            handlers: HashMap::new(),
            stop,
        })
    }

    /// Calls `handler` each time `fd` becomes readable (edge-triggered: the handler must drain
    /// the fd or remember that it did not). The fd must stay open while the loop runs.
    pub fn add(&mut self, fd: RawFd, handler: impl FnMut() + Send + 'static) -> io::Result<()> {
        let token = self.handlers.len() as u64 + 1;
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, token),
        )?;
        self.handlers.insert(token, Box::new(handler));
        Ok(())
    }

    /// Registers the backend fd of `transport`, if its device has one. Returns whether it did.
    pub fn add_transport(&mut self, transport: &Arc<Mutex<MmioTransport>>) -> io::Result<bool> {
        let fd = lock(transport).backend_fd();
        let Some(fd) = fd else { return Ok(false) };
        let t = transport.clone();
        self.add(fd, move || lock(&t).process_backend_event())?;
        Ok(true)
    }

    /// Runs the loop on a thread named `name` until the handle is stopped or dropped.
    pub fn spawn(self, name: &str) -> io::Result<EventLoopHandle> {
        let stop = self.stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || self.run())?;
        Ok(EventLoopHandle {
            stop,
            thread: Some(thread),
        })
    }

    fn run(mut self) {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio event loop: epoll_wait: {e}; stopping");
                    return;
                }
            };
            for ev in &events[..n] {
                if ev.data() == STOP_TOKEN {
                    return;
                }
                if let Some(h) = self.handlers.get_mut(&ev.data()) {
                    h();
                }
            }
        }
    }
}

/// Stops the loop thread when told or dropped.
pub struct EventLoopHandle {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoopHandle {
    pub fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(e) = self.stop.write(1) {
                log::error!("virtio event loop: signalling stop: {e}");
                return;
            }
            if t.join().is_err() {
                log::error!("virtio event loop: thread panicked");
            }
        }
    }
}

impl Drop for EventLoopHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn handler_runs_when_fd_becomes_readable_and_loop_stops() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let mut el = EventLoop::new().unwrap();
        let (h, e2) = (hits.clone(), evt.try_clone().unwrap());
        el.add(std::os::fd::AsRawFd::as_raw_fd(&evt), move || {
            let _ = e2.read();
            h.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let mut handle = el.spawn("test-virtio-ev").unwrap();
        evt.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while hits.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        handle.stop();
        assert!(handle.thread.is_none());
    }
}
