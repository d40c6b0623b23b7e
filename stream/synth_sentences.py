"""Sentences written for the generated corpus, a few per MIntRec intent, plus neutral phrases whose
intent only the voice and the face can tell (the same words as agreement, taunt or complaint)."""

from __future__ import annotations

OWN_SENTENCES: dict[str, tuple[str, ...]] = {
    "Complain": (
        "this register has been broken all week",
        "why am i always the one cleaning up",
        "the break room is freezing again",
    ),
    "Praise": (
        "you did a wonderful job with that display",
        "great work on the inventory today",
        "that was really impressive",
    ),
    "Apologise": ("i am so sorry about the mess", "sorry, that was my fault", "i apologize for being late"),
    "Thank": ("thank you so much for covering my shift", "thanks for helping me out", "i really appreciate it"),
    "Criticize": (
        "you stacked these boxes all wrong",
        "that is not how you talk to a customer",
        "this report is full of mistakes",
    ),
    "Agree": ("yes, that makes sense", "i agree with you completely", "you are right about that"),
    "Taunt": ("oh, nice job breaking it again", "wow, look who finally showed up", "good luck with that"),
    "Flaunt": (
        "i sold more than anyone this month",
        "my new car is parked right outside",
        "i basically run this place",
    ),
    "Joke": (
        "maybe the printer just needs a hug",
        "i could sleep in the mattress aisle",
        "that price tag is a real comedian",
    ),
    "Oppose": ("no, i do not think we should do that", "i am against moving the meeting", "that is a bad idea"),
    "Comfort": ("it is going to be okay", "do not worry, everyone makes mistakes", "you will get through this"),
    "Care": ("are you feeling alright", "you should sit down and rest", "did you eat anything today"),
    "Inform": ("the delivery truck arrives at nine", "we are out of paper towels", "the store closes early today"),
    "Advise": ("you should ask the manager first", "try restarting the scanner", "maybe take the day off"),
    "Arrange": (
        "let us meet in the break room at noon",
        "i will take the morning shift",
        "we can split the work in half",
    ),
    "Introduce": ("this is our new cashier, amy", "let me introduce my sister", "everyone, meet our new manager"),
    "Leave": ("i have to go now, bye", "see you all tomorrow", "i am heading home"),
    "Prevent": ("stop, do not touch that", "wait, do not open that door", "hold on, put that down"),
    "Greet": ("hi, good morning", "hello everyone", "hey, how are you"),
    "Ask for help": ("can you help me carry this", "could someone give me a hand", "i need help with the register"),
}

# Words that fit several intents; the family's prosody and expression carry the label.
NEUTRAL_PHRASES: tuple[str, ...] = (
    "yeah, right",
    "oh, great",
    "sure, okay",
    "well, that is something",
    "fine, whatever you say",
)
NEUTRAL_INTENTS: tuple[str, ...] = ("Agree", "Taunt", "Complain", "Praise", "Joke")

# A short everyday scene, said in this order by the demo clip and the latency benchmark.
SCENE_SENTENCES: tuple[str, ...] = (
    "hi everyone, good morning",
    "thank you so much for covering my shift yesterday",
    "could you help me carry these boxes to the back",
    "i am really sorry about the mess in aisle five",
    "you should put the sale signs by the entrance",
    "that was a wonderful display, great job",
    "no, i do not think we should move the meeting",
    "the delivery truck arrives at nine tomorrow",
    "well, i have to go now, see you tomorrow",
)
