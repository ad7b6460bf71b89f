import azure.functions as func


def main(timer: func.TimerRequest) -> None:
    return None
