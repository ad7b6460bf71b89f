"""A package at the app root, like the real app's shared/."""


def greeting() -> str:
    return "hello from basic_lib"
