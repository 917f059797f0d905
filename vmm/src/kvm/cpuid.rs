//! The CPUID each vCPU sees: KVM's supported set, with the PMU hidden (nested KVM under TCG does
//! not emulate the performance counters, and guests that probe them hang) and a topology that
//! matches the MP table: `cpus` cores in one package, APIC id == vCPU index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_ADDR_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_APIC_ID: u32 = 0x8000_001e;
const LEAF_EXT_PERFMON_V2: u32 = 0x8000_0022;

const ECX_HYPERVISOR: u32 = 1 << 31;
/// Set by us, not by KVM: the in-kernel LAPIC emulates it (KVM_CAP_TSC_DEADLINE_TIMER).
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
const EXT_ECX_PERFCTR_CORE: u32 = 1 << 23;
const EXT_ECX_PERFCTR_NB: u32 = 1 << 24;
const EXT_ECX_PERFCTR_LLC: u32 = 1 << 28;

/// Bits needed to number `n` things (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts one entry for vCPU `id` of `cpus`; `tsc_deadline` says whether KVM can emulate the
/// TSC deadline timer (without it Linux calibrates the LAPIC timer against the PIT, which fails
/// under nested TCG and leaves the guest on the slow PIT tick).
pub fn patch_entry(e: &mut kvm_cpuid_entry2, id: u8, cpus: u8, tsc_deadline: bool) {
    let (id, cpus) = (u32::from(id), u32::from(cpus));
    match e.function {
        LEAF_FEATURES => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff) | (id << 24) | ((cpus & 0xff) << 16);
            e.ecx |= ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if cpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        // EAX[31:26] cores per package - 1 (Intel); keep the cache description. A zero cache
        // type ends the list and stays as it is.
        LEAF_CACHE_PARAMS if e.eax & 0x1f != 0 => {
            e.eax = (e.eax & 0x03ff_ffff) | ((cpus - 1) << 26);
        }
        LEAF_PMU | LEAF_EXT_PERFMON_V2 => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Level 0: one thread per core; level 1: `cpus` cores; further levels invalid.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = bits_for(cpus);
                    e.ebx = cpus;
                    e.ecx = (2 << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i & 0xff;
                }
            }
            e.edx = id;
        }
        LEAF_EXT_FEATURES => {
            e.ecx &= !(EXT_ECX_PERFCTR_CORE | EXT_ECX_PERFCTR_NB | EXT_ECX_PERFCTR_LLC);
        }
        LEAF_EXT_ADDR_SIZES => {
            // ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1 (AMD).
            e.ecx = (e.ecx & !0xf0ff) | (bits_for(cpus) << 12) | ((cpus - 1) & 0xff);
        }
        LEAF_EXT_APIC_ID => {
            e.eax = id;
            e.ebx = id & 0xff; // core id, one thread per core
            e.ecx = 0; // node 0
        }
        _ => {}
    }
}

/// A copy of `supported` patched for vCPU `id` of `cpus`.
pub fn for_vcpu(supported: &CpuId, id: u8, cpus: u8, tsc_deadline: bool) -> CpuId {
    let mut c = supported.clone();
    for e in c.as_mut_slice() {
        patch_entry(e, id, cpus, tsc_deadline);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn pmu_is_hidden() {
        for f in [LEAF_PMU, LEAF_EXT_PERFMON_V2] {
            let mut e = entry(f, 0);
            patch_entry(&mut e, 0, 1, false);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
        }
        let mut e = entry(LEAF_EXT_FEATURES, 0);
        patch_entry(&mut e, 0, 1, false);
        assert_eq!(e.ecx & EXT_ECX_PERFCTR_CORE, 0);
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut e = entry(LEAF_FEATURES, 0);
        patch_entry(&mut e, 3, 4, true);
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.edx & EDX_HTT, 0);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        let mut t = entry(LEAF_TOPOLOGY, 1);
        patch_entry(&mut t, 2, 3, false);
        assert_eq!((t.eax, t.ebx, t.edx), (2, 3, 2));
        let mut s = entry(LEAF_EXT_ADDR_SIZES, 0);
        patch_entry(&mut s, 0, 2, false);
        assert_eq!(s.ecx & 0xff, 1);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
