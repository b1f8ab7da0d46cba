//! Load-test rig and baselines for ringbridge (see the benches for the criterion suites).
