//! Model-specific registers: the values a vCPU starts with, and the list of MSRs that make up its
//! state for capture (KVM's list, filtered to those this KVM actually lets us read).

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Kvm, VcpuFd};

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_MEM_TYPE_WB: u64 = 6;

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("building the MSR list: {0:?}")]
    Fam(vmm_sys_util::fam::Error),
    #[error("KVM_GET_MSR_INDEX_LIST: {0}")]
    IndexList(kvm_ioctls::Error),
    #[error("KVM_{op}_MSRS: {source}")]
    Ioctl {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM_SET_MSRS stopped at MSR {index:#x} ({done} of {total} set)")]
    Partial {
        index: u32,
        done: usize,
        total: usize,
    },
}

/// Values Linux expects from firmware at the 64-bit entry.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_MEM_TYPE_WB),
    ]
}

/// Writes `entries`, failing if KVM accepted fewer than all of them.
pub fn set(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), MsrError> {
    let msrs = Msrs::from_entries(entries).map_err(MsrError::Fam)?;
    let done = vcpu
        .set_msrs(&msrs)
        .map_err(|source| MsrError::Ioctl { op: "SET", source })?;
    if done != entries.len() {
        return Err(MsrError::Partial {
            index: entries[done].index,
            done,
            total: entries.len(),
        });
    }
    Ok(())
}

/// Orders MSRs for restore: the TSC deadline must come after the TSC it is relative to.
pub fn restore_order(entries: &mut [kvm_msr_entry]) {
    entries.sort_by_key(|e| (e.index == MSR_IA32_TSC_DEADLINE, e.index));
}

/// The MSRs KVM reports as saveable, minus those this vCPU refuses to read (KVM_GET_MSRS stops at
/// the first failing index; skip it and go on).
pub fn saveable_list(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, MsrError> {
    let list = kvm.get_msr_index_list().map_err(MsrError::IndexList)?;
    let mut candidates: Vec<u32> = list.as_slice().to_vec();
    candidates.sort_unstable();
    candidates.dedup();
    let mut ok = Vec::with_capacity(candidates.len());
    let mut rest = &candidates[..];
    while !rest.is_empty() {
        let n = read_prefix(vcpu, rest)?.len();
        ok.extend_from_slice(&rest[..n]);
        if n < rest.len() {
            log::debug!("MSR {:#x} is not readable, left out of the state", rest[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &[];
        }
    }
    Ok(ok)
}

/// Reads as many of `indices` as KVM returns in one call (it stops at the first it cannot read).
fn read_prefix(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, MsrError> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    // KVM takes at most KVM_MAX_MSR_ENTRIES per call.
    for chunk in entries.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let mut msrs = Msrs::from_entries(chunk).map_err(MsrError::Fam)?;
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(|source| MsrError::Ioctl { op: "GET", source })?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        if n < chunk.len() {
            break;
        }
    }
    Ok(out)
}

/// Reads all of `indices` (built by `saveable_list`).
pub fn get(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, MsrError> {
    let got = read_prefix(vcpu, indices)?;
    if got.len() != indices.len() {
        return Err(MsrError::Partial {
            index: indices[got.len()],
            done: got.len(),
            total: indices.len(),
        });
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_is_restored_after_tsc() {
        let mk = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let mut v = vec![
            mk(MSR_LSTAR),
            mk(MSR_IA32_TSC_DEADLINE),
            mk(MSR_IA32_TSC),
            mk(0x1a0),
        ];
        restore_order(&mut v);
        let idx: Vec<u32> = v.iter().map(|e| e.index).collect();
        assert_eq!(
            idx,
            vec![MSR_IA32_TSC, 0x1a0, MSR_LSTAR, MSR_IA32_TSC_DEADLINE]
        );
    }

    #[test]
    fn boot_msrs_enable_mtrr_write_back() {
        let m = boot_msrs();
        let def = m.iter().find(|e| e.index == MSR_MTRR_DEF_TYPE).unwrap();
        assert_eq!(def.data, (1 << 11) | 6);
    }
}
