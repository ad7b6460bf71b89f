import azure.functions as func

from tests.apps.events import record


def main(timer: func.TimerRequest) -> None:
    record("t_second", past_due=timer.past_due)
