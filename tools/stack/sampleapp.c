/* The sample application of the CentOps test images.
 *
 *   sampleapp            print a line, then wait until SIGTERM or SIGINT
 *   sampleapp health     exit 0 (a passing HEALTHCHECK)
 *   sampleapp unhealthy  exit 1 (a failing HEALTHCHECK)
 *   sampleapp exit [N]   print a line and exit N (default 0) at once
 *
 * The line names $APP_VERSION so a test can tell releases apart. Linked with
 * gcc -static, it runs in an image that holds nothing else.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stopping = 0;

static void on_stop(int sig) {
    (void)sig;
    stopping = 1;
}

static int wait_for_stop(void) {
    struct sigaction action;
    sigset_t blocked, waiting;

    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    /* Block first so a signal between the check and the wait is not lost. */
    sigprocmask(SIG_BLOCK, &blocked, &waiting);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigdelset(&waiting, SIGTERM);
    sigdelset(&waiting, SIGINT);
    while (!stopping) {
        sigsuspend(&waiting);
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "serve";
    const char *version = getenv("APP_VERSION");

    if (strcmp(mode, "health") == 0) {
        return 0;
    }
    if (strcmp(mode, "unhealthy") == 0) {
        return 1;
    }
    printf("sampleapp %s: %s\n", version ? version : "unknown", mode);
    fflush(stdout);
    if (strcmp(mode, "exit") == 0) {
        return argc > 2 ? atoi(argv[2]) : 0;
    }
    wait_for_stop();
    printf("sampleapp %s: stopped\n", version ? version : "unknown");
    return 0;
}
