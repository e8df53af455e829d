def main() -> None:
    raise SystemExit("todo")
