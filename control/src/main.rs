//! `ringbridge-control`: the control plane. Placeholder until its issue lands; it only says so.

fn main() {
    eprintln!("ringbridge-control: not built yet (see the control-plane issue); nothing to run");
    std::process::exit(2);
}
