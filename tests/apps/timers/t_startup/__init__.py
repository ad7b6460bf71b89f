import azure.functions as func

from tests.apps.events import record


def main(timer: func.TimerRequest) -> None:
    record("t_startup", past_due=timer.past_due)
