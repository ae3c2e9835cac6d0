//! The verifier's budget for each program of the datapath: the instructions it processed to
//! accept it (the kernel refuses a program past 10^6) and the deepest stack of its call
//! chains (past 512 bytes), against the figures committed in `tests/verifier-budgets.txt`.
//!
//! The kernel reports processed instructions (`verified_insns`, Linux 5.16) but keeps a
//! loaded program's stack depth to its verifier log, which aya drops on success. The stack
//! is therefore read from the object the way the verifier sums it: each function's frame
//! is the deepest `r10`-relative slot it touches (directly or through a pointer made from
//! `r10`), rounded up to 16 bytes as for a JIT-compiled program, and a chain's depth is the
//! sum of its frames.

use std::{collections::BTreeMap, fmt, path::PathBuf};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget, SymbolKind};

/// The verifier's limit on instructions processed for one program (BPF_COMPLEXITY_LIMIT_INSNS).
pub const INSTRUCTION_LIMIT: u32 = 1_000_000;
/// The verifier's limit on the stack of a call chain (MAX_BPF_STACK).
pub const STACK_LIMIT: u32 = 512;
/// A program may come no closer than this to a limit: 20 % of headroom.
pub const HEADROOM: f64 = 0.8;
/// Growth past the committed figure that needs the file updated: 10 %.
pub const GROWTH: f64 = 1.1;
/// The mark of a line known and accepted to sit within 20 % of a limit.
pub const NEAR_LIMIT: &str = "near-limit";
/// Set, the test rewrites the file with what it measured instead of checking.
pub const UPDATE_ENV: &str = "LB_UPDATE_BUDGETS";

/// One program's figures, with `--log-datapath` (`log`) or without.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub program: &'static str,
    pub log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Figures {
    pub instructions: u32,
    pub stack: u32,
    /// Marked `near-limit` in the file: known to sit within 20 % of a limit, reviewed and
    /// accepted; such a line may not grow at all.
    pub near_limit_accepted: bool,
}

/// The committed file.
pub fn file_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("verifier-budgets.txt")
}

/// The deepest call chain's stack, in bytes, from each function named in `entries`.
pub fn stack_depths(
    object: &[u8],
    entries: &[&'static str],
) -> Result<BTreeMap<&'static str, u32>, String> {
    let file = object::File::parse(object).map_err(|e| format!("parsing the object: {e}"))?;
    let functions = functions(&file)?;
    entries
        .iter()
        .map(|&name| {
            let index = functions
                .iter()
                .position(|f| f.name == name)
                .ok_or_else(|| format!("no function {name} in the object"))?;
            let depth = chain_depth(&functions, index, &mut Vec::new())?;
            Ok((name, depth))
        })
        .collect()
}

/// A function of the object: its frame and whom it calls.
struct Function {
    name: String,
    frame: u32,
    callees: Vec<usize>,
}

/// One BPF instruction's fields.
struct Insn {
    code: u8,
    dst: usize,
    src: usize,
    off: i64,
    imm: i64,
}

fn decode(bytes: &[u8]) -> Insn {
    Insn {
        code: bytes[0],
        dst: usize::from(bytes[1] & 0x0f),
        src: usize::from(bytes[1] >> 4),
        off: i64::from(i16::from_le_bytes([bytes[2], bytes[3]])),
        imm: i64::from(i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]])),
    }
}

const INSN: u64 = 8;
const CALL: u8 = 0x85;
const PSEUDO_CALL: usize = 1;
const LD_IMM64: u8 = 0x18;
const FRAME_POINTER: usize = 10;

fn functions(file: &object::File<'_>) -> Result<Vec<Function>, String> {
    // (section, first instruction, instruction count, name)
    let spans: Vec<_> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let section = s.section_index()?;
            Some((
                section,
                s.address() / INSN,
                s.size() / INSN,
                s.name().ok()?.to_owned(),
            ))
        })
        .collect();
    let find = |section, start| {
        spans
            .iter()
            .position(|&(s, first, _, _)| s == section && first == start)
    };
    let mut functions = Vec::with_capacity(spans.len());
    for (section_index, first, count, name) in &spans {
        let section = file
            .section_by_index(*section_index)
            .map_err(|e| format!("{name}: {e}"))?;
        let data = section.data().map_err(|e| format!("{name}: {e}"))?;
        // Calls to functions of other sections go through relocations, by instruction offset.
        let relocations: BTreeMap<u64, _> = section.relocations().collect();
        let mut frame = FrameScan::default();
        let mut callees = Vec::new();
        let mut pc = *first;
        while pc < first + count {
            let at = usize::try_from(pc * INSN).map_err(|e| e.to_string())?;
            let bytes = data
                .get(at..at + 8)
                .ok_or_else(|| format!("{name}: instruction {pc} past its section"))?;
            let insn = decode(bytes);
            frame.step(&insn);
            if insn.code == CALL && insn.src == PSEUDO_CALL {
                let (section, base) = match relocations.get(&(pc * INSN)) {
                    Some(relocation) => match relocation.target() {
                        RelocationTarget::Symbol(symbol) => {
                            let symbol = file
                                .symbol_by_index(symbol)
                                .map_err(|e| format!("{name}: {e}"))?;
                            let section = symbol
                                .section_index()
                                .ok_or_else(|| format!("{name}: a call to an undefined symbol"))?;
                            (section, symbol.address() / INSN)
                        }
                        _ => return Err(format!("{name}: a call relocated to a non-symbol")),
                    },
                    None => (*section_index, pc),
                };
                let target = (base as i64 + insn.imm + 1) as u64;
                let callee = find(section, target).ok_or_else(|| {
                    format!("{name}: a call to instruction {target} of no function")
                })?;
                callees.push(callee);
            }
            pc += if insn.code == LD_IMM64 { 2 } else { 1 };
        }
        functions.push(Function {
            name: name.clone(),
            frame: frame.depth,
            callees,
        });
    }
    Ok(functions)
}

/// The deepest stack slot a function touches, following which registers hold `r10 + k`.
#[derive(Default)]
struct FrameScan {
    frame_pointer_plus: [Option<i64>; 11],
    depth: u32,
}

impl FrameScan {
    fn touch(&mut self, offset: i64) {
        if offset < 0 {
            self.depth = self.depth.max(u32::try_from(-offset).unwrap_or(u32::MAX));
        }
    }

    fn base(&self, register: usize) -> Option<i64> {
        if register == FRAME_POINTER {
            Some(0)
        } else {
            self.frame_pointer_plus.get(register).copied().flatten()
        }
    }

    fn set(&mut self, register: usize, value: Option<i64>) {
        if let Some(slot) = self.frame_pointer_plus.get_mut(register) {
            *slot = value;
        }
    }

    /// A linear walk: LLVM makes a stack pointer right before it uses it, so the
    /// register state needs no merging at branches.
    fn step(&mut self, insn: &Insn) {
        const LDX: u8 = 1;
        const ST: u8 = 2;
        const STX: u8 = 3;
        const JMP: u8 = 5;
        const ALU64: u8 = 7;
        const MOV: u8 = 0xb0;
        const ADD: u8 = 0x00;
        const FROM_REGISTER: u8 = 0x08;
        match insn.code & 0x07 {
            LDX => {
                if let Some(base) = self.base(insn.src) {
                    self.touch(base + insn.off);
                }
                self.set(insn.dst, None);
            }
            ST | STX => {
                if let Some(base) = self.base(insn.dst) {
                    self.touch(base + insn.off);
                }
            }
            ALU64 if insn.code & 0xf0 == MOV && insn.code & FROM_REGISTER != 0 => {
                let base = self.base(insn.src);
                self.set(insn.dst, base);
            }
            ALU64 if insn.code & 0xf0 == ADD && insn.code & FROM_REGISTER == 0 => {
                let moved = self.base(insn.dst).map(|base| base + insn.imm);
                if let Some(pointer) = moved {
                    self.touch(pointer);
                }
                self.set(insn.dst, moved);
            }
            JMP if insn.code == CALL => {
                // A call clobbers r0 to r5.
                for register in 0..=5 {
                    self.set(register, None);
                }
            }
            JMP | 6 => {}
            _ => self.set(insn.dst, None),
        }
    }
}

/// The verifier's rounding of a frame when the program is JIT-compiled.
fn rounded(frame: u32) -> u32 {
    frame.div_ceil(16) * 16
}

fn chain_depth(functions: &[Function], index: usize, path: &mut Vec<usize>) -> Result<u32, String> {
    if path.contains(&index) {
        return Err(format!(
            "{} calls itself (the verifier refuses recursion)",
            functions[index].name
        ));
    }
    path.push(index);
    let mut deepest = 0;
    for &callee in &functions[index].callees {
        deepest = deepest.max(chain_depth(functions, callee, path)?);
    }
    path.pop();
    Ok(rounded(functions[index].frame) + deepest)
}

/// The committed figures, as the file lists them.
pub fn parse(text: &str, programs: &[&'static str]) -> Result<BTreeMap<Key, Figures>, String> {
    let mut figures = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || {
            format!(
                "line {}: expected `program on|off instructions stack [{NEAR_LIMIT}]`: {line}",
                number + 1
            )
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (program, log, instructions, stack, near_limit_accepted) = match fields[..] {
            [program, log, instructions, stack] => (program, log, instructions, stack, false),
            [program, log, instructions, stack, NEAR_LIMIT] => {
                (program, log, instructions, stack, true)
            }
            _ => return Err(bad()),
        };
        let program = programs
            .iter()
            .copied()
            .find(|p| *p == program)
            .ok_or_else(|| {
                format!(
                    "line {}: {program} is no program of the datapath",
                    number + 1
                )
            })?;
        let log = match log {
            "on" => true,
            "off" => false,
            _ => return Err(bad()),
        };
        let value = |field: &str| field.replace('_', "").parse::<u32>().map_err(|_| bad());
        figures.insert(
            Key { program, log },
            Figures {
                instructions: value(instructions)?,
                stack: value(stack)?,
                near_limit_accepted,
            },
        );
    }
    Ok(figures)
}

/// The file's text for `measured`, on `kernel`.
pub fn render(measured: &BTreeMap<Key, Figures>, kernel: &str) -> String {
    let mut text = format!(
        "# The verifier's work for each program of the datapath, measured on Linux {kernel}.\n\
         # Checked by the eBPF test `budgets`: a program that grows more than 10 % past its\n\
         # line, or comes within 20 % of a kernel limit (10^6 instructions, 512 bytes of\n\
         # stack), fails it. After a change that grows one on purpose, rewrite this file with\n\
         # LB_UPDATE_BUDGETS=1 cargo nextest run -p lb-tests --test ebpf budgets (as root).\n\
         #\n\
         # A line marked {NEAR_LIMIT} sits within 20 % of a limit: reviewed, accepted for\n\
         # now, and it may not grow at all (a rewrite keeps the marks).\n\
         #\n\
         # program        log   instructions  stack\n"
    );
    for (key, figures) in measured {
        let mark = if figures.near_limit_accepted {
            format!("  {NEAR_LIMIT}")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "{:<16} {:<5} {:>12}  {:>5}{mark}\n",
            key.program,
            if key.log { "on" } else { "off" },
            figures.instructions,
            figures.stack
        ));
    }
    text
}

/// What is wrong with `measured` against the committed figures, one line each.
pub fn problems(
    committed: &BTreeMap<Key, Figures>,
    measured: &BTreeMap<Key, Figures>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (key, now) in measured {
        let before = committed.get(key);
        let accepted = before.is_some_and(|before| before.near_limit_accepted);
        for (what, value, limit) in [
            ("instructions", now.instructions, INSTRUCTION_LIMIT),
            ("stack bytes", now.stack, STACK_LIMIT),
        ] {
            if f64::from(value) > f64::from(limit) * HEADROOM && !accepted {
                problems.push(Problem::NearLimit {
                    key: *key,
                    what,
                    value,
                    limit,
                });
            }
        }
        let Some(before) = before else {
            problems.push(Problem::Unlisted(*key));
            continue;
        };
        // A line accepted near its limit may not grow at all.
        let growth = if accepted { 1.0 } else { GROWTH };
        for (what, was, value) in [
            ("instructions", before.instructions, now.instructions),
            ("stack bytes", before.stack, now.stack),
        ] {
            if f64::from(value) > f64::from(was) * growth {
                problems.push(Problem::Grew {
                    key: *key,
                    what,
                    was,
                    value,
                });
            }
        }
    }
    for key in committed.keys().filter(|key| !measured.contains_key(key)) {
        problems.push(Problem::Gone(*key));
    }
    problems
}

#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    NearLimit {
        key: Key,
        what: &'static str,
        value: u32,
        limit: u32,
    },
    Grew {
        key: Key,
        what: &'static str,
        was: u32,
        value: u32,
    },
    Unlisted(Key),
    Gone(Key),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = if self.log { "with" } else { "without" };
        write!(f, "{} ({log} --log-datapath)", self.program)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NearLimit {
                key,
                what,
                value,
                limit,
            } => write!(
                f,
                "{key}: {value} {what}, within 20 % of the kernel's limit of {limit}"
            ),
            Self::Grew {
                key,
                what,
                was,
                value,
            } => write!(
                f,
                "{key}: {value} {what}, {:.1} % more than the {was} committed (10 % allowed, none on a {NEAR_LIMIT} line): if meant, update the file",
                (f64::from(*value) / f64::from(*was) - 1.0) * 100.0
            ),
            Self::Unlisted(key) => write!(f, "{key}: not in the file"),
            Self::Gone(key) => write!(f, "{key}: in the file but not measured"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(instructions: u32, stack: u32) -> Figures {
        Figures {
            instructions,
            stack,
            near_limit_accepted: false,
        }
    }

    const LB: Key = Key {
        program: "lb",
        log: false,
    };

    #[test]
    fn growth_past_ten_percent_and_closeness_to_a_limit_are_problems() {
        let committed = BTreeMap::from([(LB, figures(100_000, 200))]);
        let within = BTreeMap::from([(LB, figures(110_000, 220))]);
        assert!(problems(&committed, &within).is_empty());
        let grown = BTreeMap::from([(LB, figures(110_001, 200))]);
        assert!(matches!(
            problems(&committed, &grown)[..],
            [Problem::Grew {
                what: "instructions",
                ..
            }]
        ));
        let near = BTreeMap::from([(LB, figures(100_000, 410))]);
        let found = problems(&BTreeMap::from([(LB, figures(100_000, 410))]), &near);
        assert!(matches!(
            found[..],
            [Problem::NearLimit {
                what: "stack bytes",
                ..
            }]
        ));
    }

    #[test]
    fn the_file_reads_back_what_it_was_written_from() {
        let measured = BTreeMap::from([
            (LB, figures(12_345, 96)),
            (
                Key {
                    program: "lb",
                    log: true,
                },
                figures(23_456, 128),
            ),
        ]);
        let text = render(&measured, "6.18");
        assert_eq!(parse(&text, &["lb"]), Ok(measured));
        parse("lb maybe 1 2", &["lb"]).unwrap_err();
        parse("nope off 1 2", &["lb"]).unwrap_err();
    }

    #[test]
    fn an_accepted_near_limit_line_passes_but_may_not_grow_at_all() {
        let accepted = Figures {
            near_limit_accepted: true,
            ..figures(100_000, 416)
        };
        let committed = BTreeMap::from([(LB, accepted)]);
        let same = BTreeMap::from([(LB, figures(100_000, 416))]);
        assert!(problems(&committed, &same).is_empty());
        let grown = BTreeMap::from([(LB, figures(100_000, 432))]);
        assert!(matches!(
            problems(&committed, &grown)[..],
            [Problem::Grew {
                what: "stack bytes",
                ..
            }]
        ));
        let text = render(&committed, "6.18");
        assert!(text.contains(NEAR_LIMIT));
        assert_eq!(parse(&text, &["lb"]), Ok(committed));
    }

    #[test]
    fn a_frame_is_the_deepest_slot_touched_directly_or_through_a_pointer() {
        let mut scan = FrameScan::default();
        // *(u64 *)(r10 - 8) = r1
        scan.step(&decode(&[0x7b, 0x1a, 0xf8, 0xff, 0, 0, 0, 0]));
        assert_eq!(scan.depth, 8);
        // r2 = r10; r2 += -40: a pointer to a 40-byte-deep slot, passed to a helper.
        scan.step(&decode(&[0xbf, 0xa2, 0, 0, 0, 0, 0, 0]));
        scan.step(&decode(&[0x07, 0x02, 0, 0, 0xd8, 0xff, 0xff, 0xff]));
        assert_eq!(scan.depth, 40);
        assert_eq!(rounded(40), 48);
    }
}
