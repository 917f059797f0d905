//! A minimal MC146818 CMOS RTC on ports 0x70/0x71 (vm-superio has none for x86). It reports the
//! host's UTC time, never an update in progress, and keeps other NVRAM writes. Without it the
//! guest's rtc_cmos driver spins on all-ones reads for seconds at boot.

use std::time::{SystemTime, UNIX_EPOCH};

pub const CMOS_INDEX_PORT: u16 = 0x70;
pub const CMOS_DATA_PORT: u16 = 0x71;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register B: data mode binary (else BCD).
const B_BINARY: u8 = 1 << 2;
/// Register B: 24-hour mode.
const B_24H: u8 = 1 << 1;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = 0x26; // 32.768 kHz time base, 1024 Hz rate, UIP clear
        nvram[REG_B as usize] = B_24H;
        nvram[REG_D as usize] = 0x80; // RTC has power
        Cmos { index: 0, nvram }
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (civil calendar).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

impl Cmos {
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            CMOS_INDEX_PORT => self.index = value & 0x7f, // bit 7 is the NMI mask
            _ => match self.index {
                REG_A => self.nvram[REG_A as usize] = value & 0x7f, // UIP is read-only
                REG_C | REG_D => {}
                i => self.nvram[i as usize] = value,
            },
        }
    }

    pub fn read(&mut self, port: u16) -> u8 {
        if port == CMOS_INDEX_PORT {
            return self.index;
        }
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        self.read_at(secs)
    }

    /// Register `index` when the time is `secs` since the epoch.
    fn read_at(&self, secs: i64) -> u8 {
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400) as u32;
        let (y, m, d) = civil_from_days(days);
        let binary = self.nvram[REG_B as usize] & B_BINARY != 0;
        let enc = |v: u32| if binary { v as u8 } else { to_bcd(v) };
        match self.index {
            REG_SECONDS => enc(sod % 60),
            REG_MINUTES => enc(sod / 60 % 60),
            REG_HOURS => enc(sod / 3600),
            REG_WEEKDAY => enc(((days + 4).rem_euclid(7) + 1) as u32), // 1970-01-01 was a Thursday
            REG_DAY => enc(d),
            REG_MONTH => enc(m),
            REG_YEAR => enc(y.rem_euclid(100) as u32),
            REG_CENTURY => enc(y.div_euclid(100) as u32),
            i => self.nvram[i as usize],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn registers_in_bcd_and_binary() {
        let mut c = Cmos::default();
        // 2000-02-29 13:45:56 UTC, a Tuesday.
        let t = 11_016 * 86_400 + 13 * 3600 + 45 * 60 + 56;
        let at = |c: &mut Cmos, reg: u8| {
            c.write(CMOS_INDEX_PORT, reg | 0x80);
            c.read_at(t)
        };
        assert_eq!(at(&mut c, REG_SECONDS), 0x56);
        assert_eq!(at(&mut c, REG_HOURS), 0x13);
        assert_eq!(at(&mut c, REG_MONTH), 0x02);
        assert_eq!(at(&mut c, REG_YEAR), 0x00);
        assert_eq!(at(&mut c, REG_CENTURY), 0x20);
        assert_eq!(at(&mut c, REG_WEEKDAY), 3);
        assert_eq!(at(&mut c, REG_A) & 0x80, 0, "never an update in progress");
        c.write(CMOS_INDEX_PORT, REG_B);
        c.write(CMOS_DATA_PORT, B_24H | B_BINARY);
        assert_eq!(at(&mut c, REG_MINUTES), 45);
        c.write(CMOS_INDEX_PORT, 0x40);
        c.write(CMOS_DATA_PORT, 0xab);
        assert_eq!(at(&mut c, 0x40), 0xab, "NVRAM keeps writes");
    }
}
