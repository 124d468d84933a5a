def attempt():
    return 1
