def attempt():
    return 42
