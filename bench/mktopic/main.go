package main

import (
	"context"
	"os"
	"strconv"

	"github.com/multiconsumer/multiconsumer/kafkatest"
)

func main() {
	c, err := kafkatest.Connect(os.Args[1])
	if err != nil {
		panic(err)
	}
	defer c.Close()
	n, _ := strconv.Atoi(os.Args[3])
	if err := c.CreateTopic(context.Background(), os.Args[2], n); err != nil {
		panic(err)
	}
}
