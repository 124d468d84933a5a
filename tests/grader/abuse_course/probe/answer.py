# The marker below must never appear in anything a student run can see.
def attempt():
    return "ANSWER-SECRET-7f3c91"
