import random


def pick_winner(players):
    return random.choice(players)
