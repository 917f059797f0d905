//! The i8042 keyboard controller (ports 0x60 and 0x64), vm-superio's model. Its only job here is
//! the CPU reset line: a guest `reboot` (and the panic path of a power off without ACPI) writes
//! 0xfe to port 0x64, which ends the VM with `ExitReason::Reset` (a `Machine` then reboots it).

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use crate::exit::{ExitReason, ExitState};

pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// Records a guest reset request in the VM's exit state.
pub struct ResetTrigger(pub Arc<ExitState>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

pub type I8042 = I8042Device<ResetTrigger>;

pub fn create(exit: Arc<ExitState>) -> I8042 {
    I8042Device::new(ResetTrigger(exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_ends_the_vm() {
        let exit = Arc::new(ExitState::default());
        let mut d = create(exit.clone());
        d.write((I8042_COMMAND_PORT - I8042_DATA_PORT) as u8, 0xfe)
            .unwrap();
        assert_eq!(exit.get(), Some(ExitReason::Reset));
    }
}
