//! The classic BPF a seccomp filter is made of: a small, arch-independent description of the
//! filter ([`Filter`]) and the code generator that lays it out as instructions.
//!
//! The program reads `struct seccomp_data` (nr at 0, arch at 4, args at 16 + 8·i, each a
//! 64-bit value stored little-endian) and only ever uses these forms: `ld [k]`, `and #k`,
//! `jeq/jgt/jge #k`, `ja k` and `ret #k`. Conditional jumps reach at most 255 instructions, so
//! anything longer (a syscall with many rules, a whole arch section) is skipped with a `ja`.

use libc::sock_filter;

const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;
/// x32 syscalls run under AUDIT_ARCH_X86_64 with this bit set in their number.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(not(target_endian = "little"))]
compile_error!("seccomp argument offsets assume a little-endian seccomp_data");

/// How an argument is compared with a rule's value (libseccomp's SCMP_CMP_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == value_two`
    MaskedEq,
}

/// One comparison of argument `index` (0..6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
    pub value_two: u64,
}

/// `action` when every condition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub conds: Vec<Cond>,
    pub action: u32,
}

/// The rules of one syscall number, tried in order; `fallback` when none matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Syscall {
    pub nr: u32,
    pub rules: Vec<Rule>,
    pub fallback: u32,
}

/// Width of syscall arguments on an arch: 32-bit arches compare the low word only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    W32,
    W64,
}

/// The part of a filter for one audit arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Section {
    pub audit_arch: u32,
    pub width: Width,
    /// Numbers with [`X32_SYSCALL_BIT`] get the filter's `bad_arch` action (x86_64 only).
    pub reject_x32: bool,
    pub syscalls: Vec<Syscall>,
    pub default: u32,
}

/// A whole filter: one section per arch, `bad_arch` for any other arch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    pub sections: Vec<Section>,
    pub bad_arch: u32,
}

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(op: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: (libc::BPF_JMP | op | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset)
}

fn ret(k: u32) -> sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

fn ja(k: u32) -> sock_filter {
    stmt(libc::BPF_JMP | libc::BPF_JA, k)
}

fn and(k: u32) -> sock_filter {
    stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, k)
}

/// Appends `jeq k` over `body`: the body runs when A == k, else it is skipped.
fn guarded(out: &mut Vec<sock_filter>, k: u32, body: Vec<sock_filter>) {
    match u8::try_from(body.len()) {
        Ok(skip) => out.push(jump(libc::BPF_JEQ, k, 0, skip)),
        Err(_) => {
            out.push(jump(libc::BPF_JEQ, k, 1, 0));
            out.push(ja(body.len() as u32));
        }
    }
    out.extend(body);
}

/// Which branch of a conditional jump leaves the rule when the condition fails.
#[derive(Clone, Copy)]
enum Branch {
    True,
    False,
}

/// Instructions of one rule: conditions whose failure jumps past the rule's `ret`.
struct RuleCode {
    code: Vec<sock_filter>,
    fails: Vec<(usize, Branch)>,
}

impl RuleCode {
    fn push(&mut self, insn: sock_filter) {
        self.code.push(insn);
    }

    /// A conditional jump whose `fail` branch leaves the rule and whose other branch skips
    /// `pass` instructions.
    fn test(&mut self, op: u32, k: u32, fail: Branch, pass: u8) {
        let (jt, jf) = match fail {
            Branch::True => (0, pass),
            Branch::False => (pass, 0),
        };
        self.fails.push((self.code.len(), fail));
        self.code.push(jump(op, k, jt, jf));
    }

    fn cond(&mut self, c: &Cond, width: Width) {
        let lo_off = OFF_ARGS + 8 * u32::from(c.index);
        let hi_off = lo_off + 4;
        let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
        let (hi2, lo2) = ((c.value_two >> 32) as u32, c.value_two as u32);
        use libc::{BPF_JEQ as JEQ, BPF_JGE as JGE, BPF_JGT as JGT};
        use Branch::{False as F, True as T};
        if width == Width::W32 {
            self.push(load(lo_off));
            match c.op {
                Op::Eq => self.test(JEQ, lo, F, 0),
                Op::Ne => self.test(JEQ, lo, T, 0),
                Op::Gt => self.test(JGT, lo, F, 0),
                Op::Ge => self.test(JGE, lo, F, 0),
                Op::Lt => self.test(JGE, lo, T, 0),
                Op::Le => self.test(JGT, lo, T, 0),
                Op::MaskedEq => {
                    self.push(and(lo));
                    self.test(JEQ, lo2, F, 0);
                }
            }
            return;
        }
        // 64 bits: decide on the high words, compare the low words only when those are equal.
        self.push(load(hi_off));
        match c.op {
            Op::Eq => {
                self.test(JEQ, hi, F, 0);
                self.push(load(lo_off));
                self.test(JEQ, lo, F, 0);
            }
            Op::Ne => {
                // High words differ: passes, skipping the low-word test.
                self.code.push(jump(JEQ, hi, 0, 2));
                self.push(load(lo_off));
                self.test(JEQ, lo, T, 0);
            }
            Op::Gt | Op::Ge => {
                self.code.push(jump(JGT, hi, 3, 0));
                self.test(JEQ, hi, F, 0);
                self.push(load(lo_off));
                self.test(if c.op == Op::Gt { JGT } else { JGE }, lo, F, 0);
            }
            Op::Lt | Op::Le => {
                // hi < value's hi: passes; hi > value's hi: fails.
                self.code.push(jump(JGE, hi, 0, 3));
                self.test(JEQ, hi, F, 0);
                self.push(load(lo_off));
                self.test(if c.op == Op::Lt { JGE } else { JGT }, lo, T, 0);
            }
            Op::MaskedEq => {
                self.push(and(hi));
                self.test(JEQ, hi2, F, 0);
                self.push(load(lo_off));
                self.push(and(lo));
                self.test(JEQ, lo2, F, 0);
            }
        }
    }

    /// Ends the rule with `ret action` and points every failing branch just past it.
    fn finish(mut self, action: u32) -> Vec<sock_filter> {
        self.code.push(ret(action));
        let end = self.code.len();
        for (at, branch) in self.fails {
            // A rule has at most six conditions of at most six instructions each.
            let off = u8::try_from(end - at - 1).expect("a rule fits a conditional jump");
            match branch {
                Branch::True => self.code[at].jt = off,
                Branch::False => self.code[at].jf = off,
            }
        }
        self.code
    }
}

fn syscall_code(s: &Syscall, width: Width) -> Vec<sock_filter> {
    let mut out = Vec::new();
    for rule in &s.rules {
        let mut rc = RuleCode {
            code: Vec::new(),
            fails: Vec::new(),
        };
        for c in &rule.conds {
            rc.cond(c, width);
        }
        out.extend(rc.finish(rule.action));
    }
    out.push(ret(s.fallback));
    out
}

fn section_code(s: &Section, bad_arch: u32) -> Vec<sock_filter> {
    let mut out = vec![load(OFF_NR)];
    if s.reject_x32 {
        out.push(jump(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 1));
        out.push(ret(bad_arch));
    }
    for sc in &s.syscalls {
        // Every body ends in `ret`, so a skipped body leaves the number in A for the next test.
        guarded(&mut out, sc.nr, syscall_code(sc, s.width));
    }
    out.push(ret(s.default));
    out
}

/// Lays `filter` out as BPF instructions.
pub(crate) fn generate(filter: &Filter) -> Vec<sock_filter> {
    let mut out = vec![load(OFF_ARCH)];
    for s in &filter.sections {
        // A section always returns, so a skipped one leaves the arch in A for the next test.
        guarded(&mut out, s.audit_arch, section_code(s, filter.bad_arch));
    }
    out.push(ret(filter.bad_arch));
    out
}

/// Runs `prog` on one `seccomp_data`, as the kernel would: for tests.
#[cfg(test)]
pub(crate) fn run(prog: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if (OFF_ARGS..OFF_ARGS + 48).contains(&o) && o.is_multiple_of(4) => {
                let a = args[((o - OFF_ARGS) / 8) as usize];
                if (o - OFF_ARGS).is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
            o => panic!("load of offset {o}"),
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = prog[pc];
        let code = u32::from(i.code);
        pc += 1;
        match code {
            c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => acc = word(i.k),
            c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => acc &= i.k,
            c if c == libc::BPF_RET | libc::BPF_K => return i.k,
            c if c == libc::BPF_JMP | libc::BPF_JA => pc += i.k as usize,
            c => {
                let taken = match c & !(libc::BPF_JMP | libc::BPF_K) {
                    libc::BPF_JEQ => acc == i.k,
                    libc::BPF_JGT => acc > i.k,
                    libc::BPF_JGE => acc >= i.k,
                    _ => panic!("unexpected instruction {code:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: u32 = 0xc000_003e;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const DENY: u32 = libc::SECCOMP_RET_ERRNO | 1;

    fn one_cond(op: Op, value: u64, value_two: u64, width: Width) -> Vec<sock_filter> {
        generate(&Filter {
            sections: vec![Section {
                audit_arch: ARCH,
                width,
                reject_x32: false,
                syscalls: vec![Syscall {
                    nr: 7,
                    rules: vec![Rule {
                        conds: vec![Cond {
                            index: 2,
                            op,
                            value,
                            value_two,
                        }],
                        action: DENY,
                    }],
                    fallback: ALLOW,
                }],
                default: ALLOW,
            }],
            bad_arch: libc::SECCOMP_RET_KILL_PROCESS,
        })
    }

    fn reference(op: Op, arg: u64, v: u64, v2: u64) -> bool {
        match op {
            Op::Ne => arg != v,
            Op::Lt => arg < v,
            Op::Le => arg <= v,
            Op::Eq => arg == v,
            Op::Ge => arg >= v,
            Op::Gt => arg > v,
            Op::MaskedEq => arg & v == v2,
        }
    }

    #[test]
    fn every_operator_agrees_with_a_64_bit_comparison() {
        let values = [
            0u64,
            1,
            2,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0001,
            0x2_0000_0000,
            u64::MAX,
        ];
        let ops = [Op::Ne, Op::Lt, Op::Le, Op::Eq, Op::Ge, Op::Gt, Op::MaskedEq];
        for op in ops {
            for v in values {
                for v2 in [0, 1, 0x1_0000_0000] {
                    let prog = one_cond(op, v, v2, Width::W64);
                    for arg in values {
                        let got = run(&prog, 7, ARCH, [0, 0, arg, 0, 0, 0]) == DENY;
                        assert_eq!(
                            got,
                            reference(op, arg, v, v2),
                            "{op:?} arg {arg:#x} value {v:#x} value_two {v2:#x}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn thirty_two_bit_arches_compare_the_low_word() {
        for op in [Op::Ne, Op::Lt, Op::Le, Op::Eq, Op::Ge, Op::Gt, Op::MaskedEq] {
            for v in [0u64, 1, 5, 0xffff_ffff] {
                let prog = one_cond(op, v, 1, Width::W32);
                for arg in [0u64, 1, 4, 5, 6, 0xffff_ffff] {
                    let got = run(&prog, 7, ARCH, [0, 0, arg, 0, 0, 0]) == DENY;
                    assert_eq!(got, reference(op, arg, v, 1), "{op:?} {arg} {v}");
                }
            }
        }
    }

    #[test]
    fn other_arches_and_x32_numbers_get_the_bad_arch_action() {
        let mut f = Filter {
            sections: vec![Section {
                audit_arch: ARCH,
                width: Width::W64,
                reject_x32: true,
                syscalls: vec![],
                default: ALLOW,
            }],
            bad_arch: libc::SECCOMP_RET_KILL_PROCESS,
        };
        let prog = generate(&f);
        assert_eq!(run(&prog, 1, ARCH, [0; 6]), ALLOW);
        assert_eq!(run(&prog, X32_SYSCALL_BIT | 1, ARCH, [0; 6]), f.bad_arch);
        assert_eq!(run(&prog, 1, 0x4000_0003, [0; 6]), f.bad_arch);
        f.sections[0].reject_x32 = false;
        assert_eq!(run(&generate(&f), X32_SYSCALL_BIT | 1, ARCH, [0; 6]), ALLOW);
    }

    #[test]
    fn long_sections_and_rule_lists_are_reached_with_ja() {
        // 300 syscalls (over 255 instructions per section) and one syscall with 60 rules.
        let mut syscalls: Vec<Syscall> = (0..300)
            .map(|nr| Syscall {
                nr,
                rules: vec![],
                fallback: libc::SECCOMP_RET_ERRNO | nr,
            })
            .collect();
        syscalls.push(Syscall {
            nr: 1000,
            rules: (0..60)
                .map(|v| Rule {
                    conds: vec![Cond {
                        index: 0,
                        op: Op::Eq,
                        value: v,
                        value_two: 0,
                    }],
                    action: libc::SECCOMP_RET_TRACE | v as u32,
                })
                .collect(),
            fallback: DENY,
        });
        let sections = [0xc000_003e, 0x4000_0003]
            .map(|audit_arch| Section {
                audit_arch,
                width: Width::W64,
                reject_x32: false,
                syscalls: syscalls.clone(),
                default: ALLOW,
            })
            .to_vec();
        let prog = generate(&Filter {
            sections,
            bad_arch: 0,
        });
        for arch in [0xc000_003e, 0x4000_0003] {
            assert_eq!(run(&prog, 299, arch, [0; 6]), libc::SECCOMP_RET_ERRNO | 299);
            assert_eq!(run(&prog, 0, arch, [0; 6]), libc::SECCOMP_RET_ERRNO);
            assert_eq!(run(&prog, 5000, arch, [0; 6]), ALLOW);
            assert_eq!(
                run(&prog, 1000, arch, [59, 0, 0, 0, 0, 0]),
                libc::SECCOMP_RET_TRACE | 59
            );
            assert_eq!(run(&prog, 1000, arch, [60, 0, 0, 0, 0, 0]), DENY);
        }
        assert_eq!(run(&prog, 0, 1, [0; 6]), 0);
    }
}
