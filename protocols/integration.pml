/*
 * cevm -- the seed's disk protocols (seed 001: "Checkpointing Protocol" = CP,
 * "Disk Image Manipulation Protocol" AccessDisk = AD), as restated in
 * DESIGN.md "The disk protocols".
 *
 * Processes:
 *   OldSide  the Checkpointing protocol loop (CP 1-17): the sweep of T into U,
 *            the record capture (copy before write), and AccessDisk (AD 1-13).
 *   NewVM    New_VM's side: nondeterministic reads and writes of any cluster,
 *            at most MAXIF in flight; LAST_UPDATE once INTEGRATE_END has come
 *            and nothing is in flight; after UPDATE_DONE, plain mode on U.
 *   toOld / toNew  the channel between them (FIFO, both directions).
 *
 * The disk is NC clusters. Values: B holds 0 everywhere, T's switch-over
 * content is 1, New_VM's writes carry 2, 3, ... (every write is distinct, so
 * a lost or stale value is always visible). The initial T allocation is
 * chosen nondeterministically (every subset of the clusters), so writes to
 * clusters T did not hold at switch-over are covered.
 *
 * Properties (DESIGN.md):
 *   P1 no stale read      assert in AccessDisk's read path
 *   P2 no lost write      assert over U (+) B after UPDATE_DONE
 *   P3 record == T at switch-over   assert over the record after UPDATE_DONE
 *   P4 termination        no invalid end state (safety run) and
 *                         ltl terminates { <> newDone } under weak fairness
 *
 * Bug switches (each must make spin report an error):
 *   -DBUG_COPY_MAP        the sweep iterates a copy of T's allocation map
 *                         taken at the start (DESIGN trap 1)
 *   -DBUG_RECORD_IS_T     the record is T itself, no copy before write
 *   -DBUG_CURSOR_TO_T     a write at the cursor's own cluster goes to T
 *                         (AD 2 tested with "<" on the cluster, not "<=")
 *   -DBUG_BLOCKING_RECV   CP 10 as a blocking receive: the sweep waits for
 *                         a request New_VM may never send (P4 must fail)
 *   -DSANITY_REACH        asserts false once every property was checked:
 *                         proves the final checks are reachable (not vacuous)
 */

#ifndef NC
#define NC 3            /* clusters on the disk */
#endif
#ifndef MAXREQ
#define MAXREQ 3        /* New_VM requests during integration */
#endif
#ifndef MAXIF
#define MAXIF 2         /* New_VM requests in flight at once */
#endif

#define BVAL 0          /* B's content, every cluster */
#define TVAL 1          /* T's switch-over content, every cluster T holds */

mtype = { RD, WR, ACK, LAST_UPDATE, INTEGRATE_END, UPDATE_DONE };

/* kind, cluster, value */
chan toOld = [MAXIF + 1] of { mtype, byte, byte };
chan toNew = [MAXIF + 2] of { mtype, byte, byte };

/* the layers */
bool tHas[NC]; byte tVal[NC];           /* T: Old_VM's overlay */
bool uHas[NC]; byte uVal[NC];           /* U: New_VM's overlay, empty at start */
bool recHas[NC]; byte recVal[NC];       /* the disk record */

/* state the old side keeps */
bool s0[NC];                            /* S0: clusters T held at switch-over */
bool saved[NC];                         /* S0 clusters already in the record */
short cursor = -1;                      /* cluster the sweep is at (-1: none yet) */
bool eofT = false;                      /* EOF_on_T */
bool done = false;                      /* DONE */
#ifdef BUG_COPY_MAP
bool tMap0[NC];                         /* BUG: T's map copied at the start */
#endif

/* ghost state (the reference the properties compare against) */
byte snap[NC];                          /* T (+) B at switch-over */
byte ref[NC];                           /* last write, else snap */
bool newDone = false;                   /* New_VM reached plain mode */

/* T's allocation as the sweep sees it (CP 3: nextCluster(T, ...)) */
#ifdef BUG_COPY_MAP
#define SWEEP_SEES(k) tMap0[k]
#else
#define SWEEP_SEES(k) tHas[k]
#endif

/* AD 2 / AD 8: m.address < T.address + cluster_size, per cluster: k <= cursor */
#define BELOW_CURSOR(k) ((k) <= cursor)
#ifdef BUG_CURSOR_TO_T
#define WRITE_BELOW_CURSOR(k) ((k) < cursor)
#else
#define WRITE_BELOW_CURSOR(k) BELOW_CURSOR(k)
#endif

/* the record as the final check reads it */
#ifdef BUG_RECORD_IS_T
#define REC_HAS(k) tHas[k]
#define REC_VAL(k) tVal[k]
#else
#define REC_HAS(k) recHas[k]
#define REC_VAL(k) recVal[k]
#endif

/* copy before write: save cluster k's switch-over content once */
inline saveToRecord(k) {
#ifndef BUG_RECORD_IS_T
  if
  :: s0[k] && !saved[k] ->
     printf("EV REC save cluster %d value %d\n", k, tVal[k]);
     recHas[k] = true; recVal[k] = tVal[k]; saved[k] = true
  :: else -> skip
  fi
#else
  skip
#endif
}

/* AD 1-13 for one single-cluster request */
inline accessDisk(m, a, v) {
  if
  :: m == WR ->                                   /* AD 1 */
     if
     :: WRITE_BELOW_CURSOR(a) || eofT ->          /* AD 2 */
        printf("EV AD3 write cluster %d value %d -> U (cursor %d, eof %d)\n", a, v, cursor, eofT);
        uHas[a] = true; uVal[a] = v               /* AD 3 */
     :: else ->                                   /* AD 4 */
        printf("EV AD5 write cluster %d value %d -> T (cursor %d)\n", a, v, cursor);
        saveToRecord(a);                          /* DESIGN: copy before write */
        tHas[a] = true; tVal[a] = v               /* AD 5 */
     fi;
     ref[a] = v;                                  /* ghost: the write takes effect */
     toNew!ACK(a, v)
  :: else ->                                      /* AD 7: a read */
     if
     :: BELOW_CURSOR(a) || eofT ->                /* AD 8 */
        if                                        /* AD 9: U, else B */
        :: uHas[a] -> rv = uVal[a]
        :: else -> rv = BVAL
        fi
     :: else ->                                   /* AD 10 */
        if                                        /* AD 11: T, else U, else B */
        :: tHas[a] -> rv = tVal[a]
        :: else ->
           if
           :: uHas[a] -> rv = uVal[a]
           :: else -> rv = BVAL
           fi
        fi
     fi;
     printf("EV AD7 read cluster %d -> %d (expected %d, cursor %d, eof %d)\n", a, rv, ref[a], cursor, eofT);
     assert(rv == ref[a]);                        /* P1: no stale read */
     toNew!ACK(a, rv)
  fi
}

proctype OldSide() {
  mtype m; byte a, v, rv; short k;
  do                                              /* CP 1: while not DONE */
  :: true ->
     atomic {
       if
       :: !eofT ->                                /* CP 2 */
          k = cursor + 1;                         /* CP 3: next cluster of T */
          do
          :: k < NC && !SWEEP_SEES(k) -> k++
          :: else -> break
          od;
          if
          :: k < NC ->                            /* CP 3: not EOF */
             cursor = k;
             printf("EV CP4 sweep cluster %d T -> U (value %d)\n", k, tVal[k]);
             saveToRecord(k);                     /* DESIGN: the sweep writes the record */
             uHas[k] = true; uVal[k] = tVal[k]    /* CP 4: updateCluster(U, ...) */
          :: else ->                              /* CP 5 */
             printf("EV CP6 INTEGRATE_END\n");
             toNew!INTEGRATE_END(0, 0);           /* CP 6 */
             eofT = true                          /* CP 7 */
          fi
       :: else -> skip
       fi
     };
     atomic {
       if                                         /* CP 10: nrecv m from New_VM */
#ifdef BUG_BLOCKING_RECV
       :: true ->                                 /* BUG: recv, not nrecv */
#else
       :: nempty(toOld) ->
#endif
          toOld?m, a, v;
          if
          :: m != LAST_UPDATE ->                  /* CP 11 */
             accessDisk(m, a, v)                  /* CP 12 */
          :: else ->                              /* CP 13 */
             printf("EV CP14 LAST_UPDATE -> UPDATE_DONE\n");
             toNew!UPDATE_DONE(0, 0);             /* CP 14 */
             done = true                          /* CP 15 */
          fi
#ifndef BUG_BLOCKING_RECV
       :: empty(toOld) -> skip                    /* m == NULL */
#endif
       fi
     };
     if
     :: done -> break
     :: else -> skip
     fi
  od
}

proctype NewVM() {
  byte nreq = 0, inflight = 0, wnext = TVAL + 1, a, x, y;
  bool gotEnd = false, sentLast = false;
  mtype m;
  do
  :: !sentLast && nreq < MAXREQ && inflight < MAXIF ->
     /* a New_VM request to any cluster */
     select (a : 0 .. NC - 1);
     if
     :: toOld!RD(a, 0); printf("EV NEW request read cluster %d\n", a)
     :: toOld!WR(a, wnext); printf("EV NEW request write cluster %d value %d\n", a, wnext); wnext++
     fi;
     nreq++; inflight++
  :: !sentLast && nreq < MAXREQ ->
     nreq = MAXREQ                                /* New_VM goes quiet */
  :: toNew?m, x, y ->
     if
     :: m == INTEGRATE_END -> gotEnd = true
     :: m == ACK -> inflight--
     :: m == UPDATE_DONE -> break
     fi
  :: gotEnd && inflight == 0 && !sentLast ->
     /* nothing in flight after INTEGRATE_END */
     toOld!LAST_UPDATE(0, 0); sentLast = true
  od;
  /* plain mode on U (reads: U, else B) */
  atomic {
    a = 0;
    do
    :: a < NC ->
       if
       :: uHas[a] -> assert(uVal[a] == ref[a])    /* P2: no lost write */
       :: else -> assert(BVAL == ref[a])
       fi;
       if                                         /* P3: record == T at switch-over */
       :: s0[a] -> assert(REC_HAS(a) && REC_VAL(a) == snap[a])
       :: else -> assert(!REC_HAS(a))
       fi;
       a++
    :: else -> break
    od;
    newDone = true
  };
#ifdef SANITY_REACH
  assert(false)
#endif
}

init {
  byte k;
  atomic {
    k = 0;
    do                                            /* T at switch-over: any subset */
    :: k < NC ->
       if
       :: tHas[k] = true; tVal[k] = TVAL; s0[k] = true; snap[k] = TVAL;
          printf("EV INIT T holds cluster %d\n", k)
       :: snap[k] = BVAL
       fi;
       ref[k] = snap[k];
#ifdef BUG_COPY_MAP
       tMap0[k] = tHas[k];
#endif
       k++
    :: else -> break
    od;
    run OldSide();
    run NewVM()
  }
}

ltl terminates { <> newDone }                     /* P4 */
