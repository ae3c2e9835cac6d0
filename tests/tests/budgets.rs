//! The verifier's budget of every program of the datapath, with and without
//! `--log-datapath`: the instructions the kernel processed to accept it and its deepest
//! stack, against `tests/verifier-budgets.txt` (see `lb_tests::budget`). A path that
//! once grew past the verifier's 10^6 instructions was noticed only by a namespace test;
//! this fails first, and names the program.

use std::collections::BTreeMap;

use lb_common::{
    consts::{CAPTURE_PROGRAM_NAME, PROGRAM_NAME, PROGRAM_REDIRECT_LOST, TAIL_PROGRAMS},
    decap::{DECAP_GUE_PROGRAM_NAME as DECAP_GUE_PROGRAM, DECAP_PROGRAM_NAME as DECAP_PROGRAM},
};
use lb_tests::{
    budget::{self, Figures, Key},
    require_root,
    testrun::Datapath,
};
use lb_userspace::{
    datapath::{decap::DECAP_OBJECT, decap::Decap, load::OBJECT},
    model::limits::Options,
};

/// Every program that can be loaded into the kernel: `lb` and `lb_capture` (swapped in
/// while `lb capture` runs), the programs they tail-call, the tracing program that counts
/// lost redirects, and the backends' decap program.
fn programs() -> Vec<&'static str> {
    let mut programs = vec![PROGRAM_NAME, CAPTURE_PROGRAM_NAME];
    programs.extend(TAIL_PROGRAMS.iter().map(|(name, _)| *name));
    programs.push(PROGRAM_REDIRECT_LOST);
    programs.push(DECAP_PROGRAM);
    programs.push(DECAP_GUE_PROGRAM);
    programs
}

fn measure() -> BTreeMap<Key, Figures> {
    let programs = programs();
    let datapath_programs = &programs[..programs.len() - 2];
    let mut stacks = budget::stack_depths(OBJECT, datapath_programs).expect("read lb's object");
    stacks.extend(
        budget::stack_depths(DECAP_OBJECT, &[DECAP_PROGRAM, DECAP_GUE_PROGRAM])
            .expect("read lb_decap"),
    );
    let mut measured = BTreeMap::new();
    for log in [false, true] {
        let options = Options {
            log,
            ..Options::default()
        };
        let mut datapath = Datapath::load_with_options(Datapath::TEST_LIMITS, &options);
        for &program in datapath_programs {
            let instructions = datapath.verified_instructions(program).unwrap_or_else(|| {
                panic!(
                    "the kernel reports no verified_insns for {program} (Linux 5.16 or later does)"
                )
            });
            measured.insert(
                Key { program, log },
                Figures {
                    instructions,
                    stack: stacks[program],
                    near_limit_accepted: false,
                },
            );
        }
    }
    // The decap programs have no log of their own: one line each, under "off".
    let mut decap = Decap::load(DECAP_OBJECT).expect("the verifier accepts lb_decap");
    for program in [DECAP_PROGRAM, DECAP_GUE_PROGRAM] {
        let loaded = if program == DECAP_PROGRAM {
            decap.program()
        } else {
            decap.gue_program()
        };
        let instructions = loaded
            .info()
            .expect("the decap program's info")
            .verified_instruction_count()
            .expect("the kernel reports verified_insns (Linux 5.16 or later)");
        measured.insert(
            Key {
                program,
                log: false,
            },
            Figures {
                instructions,
                stack: stacks[program],
                near_limit_accepted: false,
            },
        );
    }
    measured
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
        |_| "(unknown)".to_owned(),
        |release| release.trim().to_owned(),
    )
}

#[test]
fn every_program_stays_within_its_committed_verifier_budget() {
    require_root!();
    let mut measured = measure();
    let path = budget::file_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let committed =
        budget::parse(&text, &programs()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if std::env::var_os(budget::UPDATE_ENV).is_some() {
        // A near-limit mark is a reviewer's decision: a rewrite keeps it.
        for (key, figures) in &mut measured {
            figures.near_limit_accepted = committed.get(key).is_some_and(|c| c.near_limit_accepted);
        }
        std::fs::write(&path, budget::render(&measured, &kernel_release()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        lb_tests::loud(&format!("budgets: rewrote {}", path.display()));
        return;
    }
    let problems = budget::problems(&committed, &measured);
    assert!(
        problems.is_empty(),
        "verifier budgets ({}, measured on Linux {}):\n{}\n\nmeasured now:\n{}",
        path.display(),
        kernel_release(),
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        budget::render(&measured, &kernel_release())
    );
}
