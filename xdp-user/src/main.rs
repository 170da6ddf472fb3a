fn main() -> anyhow::Result<()> {
    ampguard::cli::main()
}
